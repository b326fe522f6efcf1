"""Engagement-wide ignore rules end to end (issue 16): the real ``smartsync-admin engagement
ignore`` sets, shows and clears them on the real daemon, and the real ``smartsync`` client
fetches and applies them at each sync: a new ignored file stays local (exit 0, nothing
refused), a file the rules now ignore deletes nothing, and its other files upload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from test_cli_client import Client, login, provisioned

pytestmark = pytest.mark.integration

RULES = "# firm-wide\n*.bak\nscratch/\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Daemon]:
    d = provisioned(tmp_path / "srv")
    try:
        yield d
    finally:
        d.stop()


def test_rules_set_by_the_admin_cli_are_applied_by_the_client(
    server: Daemon, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    copy = tmp_path / "copy"
    assert client.run("clone", f"{server.url}/acme-2026", str(copy)).returncode == 0
    (copy / "old.bak").write_text("stored before the rule\n")
    first = client.run("--json", "sync", str(copy))
    assert first.returncode == 0 and json.loads(first.stdout)["uploaded"] == 1, first.stdout

    bad = tmp_path / "bad.rules"
    bad.write_text("ok.txt\n[z-a].txt\n")
    refused = server.admin("engagement", "ignore", "acme-2026", "--set", str(bad))
    assert refused.returncode != 0 and "line 2" in refused.stderr, refused.stderr
    assert server.admin("engagement", "ignore", "acme-2026", "--show").stdout == ""
    rules = tmp_path / "firm.rules"
    rules.write_text(RULES)
    done = server.admin("engagement", "ignore", "acme-2026", "--set", str(rules))
    assert done.returncode == 0 and "digest" in done.stdout, done.stderr
    assert server.admin("engagement", "ignore", "acme-2026", "--show").stdout == RULES

    (copy / "draft.bak").write_text("a new ignored file\n")
    (copy / "scratch").mkdir()
    (copy / "scratch" / "note.txt").write_text("ignored by folder\n")
    (copy / "B-1 Cash.txt").write_text("cash 100\n")
    (copy / "old.bak").unlink()  # now ignored: its absence deletes nothing
    report = client.run("--json", "sync", str(copy))
    answer = json.loads(report.stdout)
    assert report.returncode == 0, report.stdout + report.stderr
    assert (answer["uploaded"], answer["deleted_remote"], answer["partial"]) == (1, 0, False), answer
    assert answer["skipped"] == [], answer
    assert (copy / "draft.bak").read_text() == "a new ignored file\n"  # kept locally
    (copy / "Thumbs.db").write_bytes(b"thumbnails")
    status = client.run("--json", "status", str(copy))
    assert status.returncode == 0, status.stderr
    ignored = {x["path"]: x["rules"] for x in json.loads(status.stdout)["ignored"]}
    assert ignored == {"draft.bak": "engagement", "scratch/": "engagement",
                       "Thumbs.db": "built-in"}, status.stdout
    text = client.run("status", str(copy)).stdout
    assert "ignored: path draft.bak, rules engagement" in text, text

    other = tmp_path / "other"
    assert client.run("clone", f"{server.url}/acme-2026", str(other)).returncode == 0
    assert (other / "B-1 Cash.txt").read_text() == "cash 100\n"
    # the clone's first pull knows the rules: old.bak stays on the server, not written here
    assert not (other / "old.bak").exists() and not (other / "draft.bak").exists()
    assert json.loads(client.run("--json", "sync", str(other)).stdout)["downloaded"] == 0

    assert server.admin("engagement", "ignore", "acme-2026", "--clear").returncode == 0
    assert server.admin("engagement", "ignore", "acme-2026", "--show").stdout == ""
    after = client.run("--json", "sync", str(copy))
    done_after = json.loads(after.stdout)
    assert after.returncode == 0 and done_after["uploaded"] == 2, after.stdout
    assert done_after["deleted_remote"] == 1, after.stdout  # old.bak, no longer ignored
    audit = server.admin("audit", "export", "acme-2026")
    assert audit.stdout.count("ignore_rules") == 2, audit.stdout


def test_an_engagement_admin_sets_and_reads_rules_with_smartsync(
    server: Daemon, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    client = Client(home)
    assert login(client, server, "--trust-fingerprint", server.fingerprint).returncode == 0
    where = f"{server.url}/acme-2026"
    rules = tmp_path / "firm.rules"
    rules.write_text(RULES)
    as_editor = client.run("ignore-rules", "--set", str(rules), where)
    assert as_editor.returncode == 5 and "admin" in as_editor.stderr, as_editor.stderr
    assert server.admin("grant", "acme-2026", "--user", "alice", "--role", "admin").returncode == 0
    bad = tmp_path / "bad.rules"
    bad.write_text("[z-a]\n")
    refused = client.run("ignore-rules", "--set", str(bad), where)
    assert refused.returncode != 0 and "line 1" in refused.stderr, refused.stderr
    done = client.run("--json", "ignore-rules", "--set", str(rules), where)
    assert done.returncode == 0, done.stderr
    assert server.admin("engagement", "ignore", "acme-2026", "--show").stdout == RULES
    shown = json.loads(client.run("--json", "ignore-rules", where).stdout)
    assert shown["rules"] == RULES and shown["digest"] == json.loads(done.stdout)["digest"]
    assert "alice" in server.admin("audit", "export", "acme-2026").stdout
    assert client.run("ignore-rules", "--clear", where).returncode == 0
    assert client.run("ignore-rules", where).stdout.strip() == "No engagement ignore rules."
