"""The ops JSON log (service/logs.py): one plain JSON object per line, no secrets, reopen."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure

from smartsyncd.service.logs import JsonLogService, ops_record


def test_ops_record_renders_the_message_and_keeps_search_fields() -> None:
    event = {
        "log_format": "sign-in {user} from {client}",
        "log_level": LogLevel.info,
        "log_namespace": "smartsyncd.auth",
        "log_time": 1767225600.25,
        "user": "alice",
        "client": "203.0.113.9",
        "engagement": "acme-2026",
        "request_id": "r-1",
        "password": "hunter2",
        "session_token": "tok",
        "log_logger": object(),
        "groups": ("a", "b"),
        "blob": object(),
    }
    record = ops_record(event)
    assert record == {
        "time": "2026-01-01T00:00:00.250Z",
        "level": "info",
        "message": "sign-in alice from 203.0.113.9",
        "event": "sign-in {user} from {client}",
        "namespace": "smartsyncd.auth",
        "user": "alice",
        "client": "203.0.113.9",
        "engagement": "acme-2026",
        "request_id": "r-1",
        "groups": ["a", "b"],
    }


def test_a_failure_is_one_line_of_json_with_its_traceback(tmp_path: Path) -> None:
    publisher = LogPublisher()
    path = tmp_path / "ops.json"
    service = JsonLogService(str(path), publisher)
    service.privilegedStartService()
    failure = Failure(ZeroDivisionError("division by zero"))
    Logger(observer=publisher).failure("computing {what} failed", failure, what="x")
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["level"] == "critical" and record["message"] == "computing x failed"
    assert "ZeroDivisionError" in record["error"]
    service.stopService()


def test_reopen_writes_to_a_new_file_after_a_move(tmp_path: Path) -> None:
    publisher = LogPublisher()
    path = tmp_path / "ops.json"
    service = JsonLogService(str(path), publisher)
    service.privilegedStartService()
    log = Logger(observer=publisher)
    log.info("one")
    path.rename(tmp_path / "ops.json.1")
    service.reopen()
    log.info("two")
    service.stopService()
    assert [json.loads(x)["message"] for x in (tmp_path / "ops.json.1").read_text().splitlines()] == ["one"]
    assert [json.loads(x)["message"] for x in path.read_text().splitlines()] == ["two"]
    assert path.stat().st_mode & 0o777 == 0o640
