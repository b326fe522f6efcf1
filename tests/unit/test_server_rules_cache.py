"""The client's copy of the engagement's ignore rules: fetched on the kept set's ETag, kept, and
used when the server says it is unchanged (304) or a fetch fails."""

from __future__ import annotations

from pathlib import Path

from smartsyncd.client.errors import NetworkError, NotFound
from smartsyncd.client.serverrules import (
    CACHE_NAME,
    UNCHANGED,
    RulesAnswer,
    current_rules,
    read_cached,
)
from smartsyncd.core.ignore import rules_digest, rules_etag


async def _run(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


def _answer(text: str | None, asked: list[str | None] | None = None):  # type: ignore[no-untyped-def]
    async def fetch(etag: str | None) -> RulesAnswer:
        if asked is not None:
            asked.append(etag)
        return RulesAnswer(changed=True, text=text)

    return fetch


def _failing(error: Exception):  # type: ignore[no-untyped-def]
    async def fetch(etag: str | None) -> RulesAnswer:
        raise error

    return fetch


def _unchanged(asked: list[str | None]):  # type: ignore[no-untyped-def]
    async def fetch(etag: str | None) -> RulesAnswer:
        asked.append(etag)
        return UNCHANGED

    return fetch


async def test_fetched_rules_apply_and_are_kept(tmp_path: Path) -> None:
    rules = await current_rules(_answer("*.bak\n"), tmp_path, _run)
    assert rules is not None and rules.ignores("a/x.bak") and not rules.ignores("x.txt")
    kept = read_cached(tmp_path)
    assert kept is not None and kept.text == "*.bak\n"


async def test_a_failed_fetch_uses_the_cached_rules_not_none(tmp_path: Path) -> None:
    await current_rules(_answer("*.bak\n"), tmp_path, _run)
    rules = await current_rules(_failing(NetworkError("unreachable")), tmp_path, _run)
    assert rules is not None and rules.ignores("x.bak")


async def test_an_older_server_without_the_route_means_no_rules(tmp_path: Path) -> None:
    refused = NotFound("not_found", "no such route", 404)
    assert await current_rules(_failing(refused), tmp_path, _run) is None
    assert not (tmp_path / CACHE_NAME).exists()


async def test_cleared_rules_replace_the_cached_ones(tmp_path: Path) -> None:
    await current_rules(_answer("*.bak\n"), tmp_path, _run)
    assert await current_rules(_answer(None), tmp_path, _run) is None
    assert read_cached(tmp_path) is None
    assert await current_rules(_failing(NetworkError("down")), tmp_path, _run) is None


async def test_the_kept_set_is_named_by_its_etag_and_a_304_keeps_it(tmp_path: Path) -> None:
    asked: list[str | None] = []
    await current_rules(_answer("*.bak\n", asked), tmp_path, _run)  # nothing kept: no ETag
    before = (tmp_path / CACHE_NAME).stat().st_mtime_ns
    rules = await current_rules(_unchanged(asked), tmp_path, _run)
    assert asked == [None, rules_etag(rules_digest("*.bak\n"))]
    assert rules is not None and rules.ignores("x.bak")
    assert (tmp_path / CACHE_NAME).stat().st_mtime_ns == before  # a 304 rewrites nothing


async def test_a_kept_empty_set_is_named_none_and_a_304_means_still_none(tmp_path: Path) -> None:
    asked: list[str | None] = []
    await current_rules(_answer(None, asked), tmp_path, _run)
    assert (tmp_path / CACHE_NAME).exists()  # "no rules" is kept too: it has an ETag
    assert await current_rules(_unchanged(asked), tmp_path, _run) is None
    assert asked == [None, rules_etag(None)] == [None, '"none"']


def test_engagement_rules_add_to_the_local_ones_case_sensitively() -> None:
    from smartsyncd.core.ignore import EngagementRules, IgnoreRules

    local = IgnoreRules.parse("*.tmp\n")
    both = local.with_engagement(EngagementRules.parse("*.bak\nscratch/\n"))
    assert both.ignores("x.tmp") and both.ignores("a/x.bak") and both.ignores("Thumbs.db")
    assert both.ignores("scratch/note.txt") and both.ignores_folder("scratch")
    assert not both.ignores("x.BAK") and not local.ignores("x.bak")
    assert local.with_engagement(None) is local
