"""The ``smartsync`` side of a remote wipe (docs/client.md, "Remote wipe"): a command whose
copy is answered with a wipe order obeys it (client/wipe.py) and prints what happened; a copy
whose wipe was interrupted is finished when a command opens it again. Exit code 7."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet.threads import deferToThread

from smartsyncd.cli.client_session import Output, Session
from smartsyncd.client import wipe
from smartsyncd.client.errors import CopyWiped, WipeOrdered


class Wiped(CopyWiped):
    """The command's copy was wiped (now, or finishing an earlier interrupted wipe)."""

    def __init__(self, result: wipe.WipeResult) -> None:
        super().__init__(result.describe())
        self.result = result


def _forget(session: Session) -> Callable[[str], None]:
    """Forget the stored session token (and single sign-on) of a server, durably."""

    def forget(url: str) -> None:
        session.config.forget_token(url)
        session.config.save()
        session.forget_tls_session(url)

    return forget


async def obey_order(session: Session, order: WipeOrdered) -> Wiped:
    """Obey ``order`` for the copy the command opened, over that copy's own server
    connection; without an opened copy the order is only an error (nothing is deleted)."""
    if session.opened is None:
        raise order
    copy, api = session.opened
    session.opened = None
    result = await wipe.obey(
        copy.directory, copy.state, copy.lock, api, order, copy.ctx.run, _forget(session)
    )
    copy.lock = None  # released by the wipe
    return Wiped(result)


async def finish_interrupted(session: Session, directory: Path) -> None:
    """Finish a wipe that an earlier run began in ``directory`` (raises ``Wiped``); nothing
    when none did."""
    directory = directory.absolute()
    marker = wipe.read_wipe_marker(directory)
    if marker is None:
        return
    api = session.api(marker.server, session.policy(marker.server), with_token=False)
    raise Wiped(await wipe.resume(directory, marker, api, deferToThread, _forget(session)))


def print_wiped(out: Output, done: Wiped) -> int:
    out.result(done.result.describe(), done.result.to_json())
    return done.exit_code
