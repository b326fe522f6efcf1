"""Shared pytest fixtures: a fail-on-logged-errors guard (trial did this; pytest does not)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.logger import LogLevel, globalLogPublisher


@pytest.fixture(autouse=True)
def fail_on_logged_errors(request: pytest.FixtureRequest) -> Iterator[list[dict]]:
    """Fail a test when anything logs at critical level or an unhandled Deferred error.

    Tests that provoke logged errors on purpose mark themselves ``allow_logged_errors``.
    """
    seen: list[dict] = []

    def observer(event: dict) -> None:
        level = event.get("log_level")
        if level is LogLevel.critical or "failure" in event and level is LogLevel.critical:
            seen.append(event)
        if event.get("isError") and "failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observer)
    if seen and request.node.get_closest_marker("allow_logged_errors") is None:
        from twisted.logger import formatEvent

        pytest.fail("logged errors:\n" + "\n".join(formatEvent(e) for e in seen))
