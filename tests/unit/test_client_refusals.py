"""Every refusal the server can answer becomes its own exception type in the client library,
and ``smartsync --json`` keeps reporting the error kind it always did."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from smartsyncd.cli.client import Output
from smartsyncd.client import errors
from smartsyncd.client.errors import (
    AuthError,
    NetworkError,
    ServerRefused,
    SessionExpired,
    refusal,
)
from smartsyncd.client.transport import Reply, raise_for_status
from smartsyncd.core import errors as server_errors

# the server's refusal class (core/errors.py) -> the type the client raises for its code
EXPECTED: dict[type[server_errors.SyncError], type[ServerRefused]] = {
    server_errors.BadRequest: errors.BadRequest,
    server_errors.InvalidPath: errors.PathRefused,
    server_errors.PathClash: errors.PathClash,
    server_errors.MissingChunks: errors.MissingChunks,
    server_errors.UnknownContent: errors.UnknownContent,
    server_errors.BadChunk: errors.BadChunk,
    server_errors.NotFound: errors.NotFound,
    server_errors.Forbidden: errors.Forbidden,
    server_errors.RateLimited: errors.RateLimited,
    server_errors.TooLarge: errors.TooLarge,
    server_errors.StorageFull: errors.StorageFull,
    server_errors.QuotaExceeded: errors.QuotaExceeded,
    server_errors.Retained: errors.Retained,
    server_errors.HistoryDiverged: errors.HistoryDiverged,
    server_errors.Locked: errors.Locked,
    server_errors.BatchReused: errors.BatchReused,
    server_errors.Finalized: errors.Finalized,
    server_errors.CopyAbandoned: errors.CopyAbandoned,
    server_errors.WipeOrdered: errors.WipeOrdered,
    server_errors.UnsyncedCopies: errors.UnsyncedCopies,
    server_errors.ConflictResolved: errors.ConflictResolved,
    server_errors.ConflictStale: errors.ConflictStale,
    server_errors.LastAdmin: errors.LastAdmin,
}
# codes answered with a status the client maps before looking at the code
BY_STATUS = {server_errors.AuthFailed, server_errors.SessionExpired, server_errors.Unavailable}


def _server_refusals() -> list[type[server_errors.SyncError]]:
    found, todo = [], [server_errors.SyncError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        # the codes the web layer answers with (core/errors.py), not local ones elsewhere
        if cls is not server_errors.SyncError and cls.__module__ == server_errors.__name__:
            found.append(cls)
    return found


def _reply(exc: server_errors.SyncError) -> Reply:
    return Reply(exc.status, json.dumps(exc.to_json()).encode(), "application/json")


def test_every_server_refusal_has_a_client_type() -> None:
    # a subclass of a status-mapped refusal (a branch's 503 central_unreachable) keeps its status
    missing = [cls.__name__ for cls in _server_refusals()
               if cls not in EXPECTED and not issubclass(cls, tuple(BY_STATUS))]
    assert missing == []


@pytest.mark.parametrize("server_cls", list(EXPECTED), ids=lambda c: c.code)
def test_a_refusal_is_raised_as_its_type(server_cls: type[server_errors.SyncError]) -> None:
    answer = server_cls("no, because", path="a/b.txt")
    with pytest.raises(ServerRefused) as caught:
        raise_for_status(_reply(answer), "https://files.example")
    exc = caught.value
    assert type(exc) is EXPECTED[server_cls]
    assert (exc.code, exc.message, exc.status) == (server_cls.code, "no, because", answer.status)
    assert exc.path == "a/b.txt"
    assert exc.exit_code == 5


def test_path_clash_and_history_carry_their_fields() -> None:
    clash = refusal("path_clash", "taken", 409, {"path": "A.txt", "existing": "a.txt"})
    assert isinstance(clash, errors.PathClash)
    assert (clash.path, clash.existing) == ("A.txt", "a.txt")
    odd = refusal("path_clash", "taken", 409, {"path": 7, "existing": None})
    assert isinstance(odd, errors.PathClash) and odd.path is None and odd.existing is None
    diverged = refusal("history_diverged", "restored", 409, {"store": "s1", "generation": 3})
    assert isinstance(diverged, errors.HistoryDiverged)
    assert (diverged.store, diverged.generation) == ("s1", 3)
    assert refusal("history_diverged", "x", 409, {"generation": True}).generation is None


def test_an_unknown_code_stays_a_plain_refusal() -> None:
    reply = Reply(418, b'{"error": "teapot", "message": "short and stout"}', "application/json")
    with pytest.raises(ServerRefused) as caught:
        raise_for_status(reply, "https://files.example")
    assert type(caught.value) is ServerRefused and caught.value.code == "teapot"
    with pytest.raises(ServerRefused) as caught:
        raise_for_status(Reply(500, b"oops", "text/plain"), "https://files.example")
    assert type(caught.value) is ServerRefused and caught.value.code == "http_500"


def test_status_mapped_answers_are_not_refusals() -> None:
    url = "https://files.example"
    with pytest.raises(SessionExpired):
        raise_for_status(_reply(server_errors.SessionExpired("ended")), url)
    with pytest.raises(AuthError) as caught:
        raise_for_status(_reply(server_errors.AuthFailed("no")), url)
    assert not isinstance(caught.value, SessionExpired)
    with pytest.raises(NetworkError) as net:
        raise_for_status(_reply(server_errors.Unavailable("db down")), url)
    assert net.value.retryable


def _json_error(exc: BaseException, code: int) -> dict[str, object]:
    stdout, stderr = io.StringIO(), io.StringIO()
    Output(argparse.Namespace(json=True, quiet=False), stdout, stderr).error(exc, code)
    assert stderr.getvalue().startswith("smartsync: error: ")
    result: dict[str, object] = json.loads(stdout.getvalue())
    return result


@pytest.mark.parametrize("client_cls", sorted(set(EXPECTED.values()) - {errors.HistoryDiverged},
                                              key=lambda c: c.__name__))
def test_cli_json_keeps_the_kind_server_refused(client_cls: type[ServerRefused]) -> None:
    exc = client_cls("locked", "checked out by bob", 409, {"path": "a.txt"})
    data = _json_error(exc, exc.exit_code)
    assert data == {
        "error": "ServerRefused", "message": "server refused (locked): checked out by bob",
        "exit_code": 5,
    }


def test_cli_json_kinds_of_other_errors_are_unchanged() -> None:
    diverged = refusal("history_diverged", "restored", 409)
    assert _json_error(diverged, 5)["error"] == "HistoryDiverged"
    assert _json_error(SessionExpired("ended"), 3)["error"] == "SessionExpired"
    assert _json_error(NetworkError("down"), 4)["error"] == "NetworkError"
