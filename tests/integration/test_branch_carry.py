"""A branch office carrying engagements (issue 18): prefetch with a branch credential, a clone
while the office link is down, and the cache's size limit. All real, as test_branch.py: a
PostgreSQL 15 primary and its streaming standby, central and branch ``twistd`` daemons, the
byte-counting relay as the office link, ``smartsync-admin branch ...`` and the ``smartsync``
CLI for every user.

- ``branch carry office1 acme``: the branch prefetches acme's head, and keeps up with a new
  commit; a branch user's clone of it then moves no chunk bytes over the link.
- The branch credential, used directly at central: chunk and manifest reads of a carried
  engagement pass; a non-carried engagement, any other read, any write, a sign-in and a
  removed branch's credential are all a JSON 403 (or the sign-in's 401), and nothing changed.
- The link cut: a user with a session clones the carried engagement from the branch alone,
  files identical; the copy registers itself at central at its next sync.
- Read events at the branch (its database is read-only) reach central's audit trail under the
  reading user, with the time of the read and ``via: branch:office1``; with the link down they
  wait in the branch's spool folder, and go when it is back.
- ``[branch] cache_max_bytes``: a non-carried engagement's chunks are trimmed (least recently
  used first) to keep the cache under the limit, the carried head is kept, and a later pull of
  the trimmed files still works (fetched again).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import Daemon, DaemonStartError, running_daemon
from pg import PgCluster
from relay import ByteRelay
from test_branch import PASSWORD, _config, _token, clusters, ok, user, wait_for

pytestmark = pytest.mark.integration

__all__ = ["clusters"]  # the module fixture, shared with test_branch.py
CACHE_MAX = 4 << 20  # the carried acme holds about 2.2 MB of it
USERS = ("alice", "bob", "carol", "dave", "erin")


class CarryOffice:
    """central -- relay -- branch, the branch holding the credential of branch ``office1``."""

    def __init__(
        self, base: Path, primary: PgCluster, standby: PgCluster, wal_link: ByteRelay,
        cache_max: int | None = CACHE_MAX,
    ) -> None:
        self.primary, self.standby, self.wal_link = primary, standby, wal_link
        self.database = primary.create_database("carry")
        self.central = running_daemon(base, config_text=_config(primary.url(self.database)), name="central")
        for name in USERS:
            self.central.add_user(name, PASSWORD)
        for engagement in ("acme", "other"):
            self.central.new_engagement(engagement, editors=USERS)
        self.credential = base / "office1.credential"
        admin_ok(self.central, "branch", "add", "office1", "--credential-file", str(self.credential))
        admin_ok(self.central, "branch", "carry", "office1", "acme")
        self.secret = self.credential.read_text().strip()
        self.relay = ByteRelay(self.central.port).start()
        standby.wait_replayed()
        self.branch = running_daemon(base, name="branch", config_text=_config(
            standby.url(self.database),
            f"[branch]\ncentral = https://127.0.0.1:{self.relay.port}\n"
            f"central_fingerprint = {self.central.fingerprint}\ncommit_wait_seconds = 8\n"
            f"credential_file = {self.credential}\n"
            + ("" if cache_max is None else f"cache_max_bytes = {cache_max}\n"),
        ))

    def prefetch(self) -> dict[str, Any]:
        status, health = self.branch.request("GET", "/healthz")
        assert status == 200, health
        report: dict[str, Any] = health["branch"]["prefetch"]
        return report

    def wait_carried(self, engagement: str, head: int) -> dict[str, Any]:
        """Poll /healthz until the prefetch made ``head`` complete."""
        wait_for(lambda: self.prefetch()["engagements"].get(engagement, {}).get("head") == head, timeout=60)
        return self.prefetch()

    def central_head(self, engagement: str) -> int:
        token = self.central.login("alice", PASSWORD)
        status, answer = self.central.request("GET", f"/v1/engagements/{engagement}", token=token)
        assert status == 200, answer
        return int(answer["head"])

    def stop(self) -> None:
        self.branch.stop()
        self.relay.stop()
        self.central.stop()


def admin_ok(daemon: Daemon, *args: str) -> str:
    done = daemon.admin(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def office(clusters: tuple[PgCluster, PgCluster, ByteRelay], tmp_path_factory: pytest.TempPathFactory) -> Iterator[CarryOffice]:
    o = CarryOffice(tmp_path_factory.mktemp("carry"), *clusters)
    try:
        yield o
    finally:
        o.stop()


def as_branch(daemon: Daemon, secret: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to central with ``Authorization: SmartsyncBranch <secret>``."""
    conn = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=daemon.ssl_context(), timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"SmartsyncBranch {secret}", "Content-Type": "application/json"}
        conn.request(method, path, body=data, headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
        is_json = answer.getheader("Content-Type", "").startswith("application/json")
        return answer.status, json.loads(raw) if is_json else raw
    finally:
        conn.close()


def fill(folder: Path, files: dict[str, int]) -> dict[str, str]:
    """Write incompressible files; returns each one's SHA-256."""
    out = {}
    for name, size in files.items():
        data = os.urandom(size)
        (folder / name).write_bytes(data)
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def digests(folder: Path, names: Iterator[str] | list[str]) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def test_carry_prefetches_so_a_branch_clone_moves_no_chunk_bytes(office: CarryOffice, tmp_path: Path) -> None:
    alice = user(tmp_path, "alice", office.central)
    at_central = tmp_path / "alice"
    ok(alice.run("clone", f"{office.central.url}/acme", str(at_central)))
    written = fill(at_central, {"Ledger.bin": 1 << 20, "Payroll.bin": 600_000, "Notes.txt": 5_000})
    ok(alice.run("sync", str(at_central)))
    report = office.wait_carried("acme", office.central_head("acme"))
    fetched = report["engagements"]["acme"]["bytes"]
    total = sum((at_central / n).stat().st_size for n in written)
    assert total <= fetched < total * 1.05, report

    bob = user(tmp_path, "bob", office.branch)
    office.relay.reset()
    copy = tmp_path / "bob"
    ok(bob.run("clone", f"{office.branch.url}/acme", str(copy)))
    assert digests(copy, list(written)) == written
    crossed = office.relay.to_client
    # what crossed is the copy's registration at central and its answer: no chunk
    print(f"carried: {fetched} bytes prefetched for {total} bytes of files; a branch clone"
          f" then moved {crossed} bytes from central over the link")
    assert crossed < 20_000, crossed
    assert office.prefetch()["engagements"]["acme"]["bytes"] == fetched  # nothing fetched again

    # a new commit at central is prefetched as it replays
    more = fill(at_central, {"Later.bin": 300_000})
    ok(alice.run("sync", str(at_central)))
    report = office.wait_carried("acme", office.central_head("acme"))
    assert report["engagements"]["acme"]["bytes"] >= fetched + 300_000
    office.relay.reset()
    ok(bob.run("sync", str(copy)))
    assert digests(copy, list(more)) == more
    assert office.relay.to_client < 20_000, office.relay.to_client


def test_the_branch_credential_reads_carried_chunks_only(office: CarryOffice, tmp_path: Path) -> None:
    alice = user(tmp_path, "alice", office.central)
    for engagement in ("acme", "other"):
        copy = tmp_path / f"alice-{engagement}"
        ok(alice.run("clone", f"{office.central.url}/{engagement}", str(copy)))
        fill(copy, {f"{engagement}.bin": 70_000})
        ok(alice.run("sync", str(copy)))
    central, secret = office.central, office.secret
    token = _token(alice, central)
    hashes = {}
    for engagement in ("acme", "other"):
        status, snap = central.request("GET", f"/v1/engagements/{engagement}/snapshot", token=token)
        content = next(f["content"] for f in snap["files"] if f["path"] == f"{engagement}.bin")
        status, found = central.request("GET", f"/v1/engagements/{engagement}/manifests/{content}", token=token)
        assert status == 200
        hashes[engagement] = (content, [c[0] for c in found["chunks"]])

    # the one narrow path: chunks and manifests of a carried engagement
    status, data = as_branch(central, secret, "POST", "/v1/engagements/acme/chunks/fetch", {"chunks": hashes["acme"][1]})
    assert status == 200 and isinstance(data, bytes) and len(data) > 60_000
    status, answer = as_branch(central, secret, "POST", "/v1/engagements/acme/manifests",
                               {"files": [{"content": hashes["acme"][0]}]})
    assert status == 200, answer

    head_before = office.central_head("other"), office.central_head("acme")
    refusals = [
        ("POST", "/v1/engagements/other/chunks/fetch", {"chunks": hashes["other"][1]}),
        ("POST", "/v1/engagements/other/manifests", {"files": [{"content": hashes["other"][0]}]}),
        ("POST", "/v1/engagements/nosuch/chunks/fetch", {"chunks": hashes["acme"][1]}),
        ("GET", "/v1/engagements/acme/snapshot", None),
        ("GET", "/v1/engagements/acme/changes?since=0", None),
        ("GET", f"/v1/engagements/acme/manifests/{hashes['acme'][0]}", None),
        ("GET", "/v1/engagements", None),
        ("POST", "/v1/engagements/acme/commit", {"batch": "b1", "changes": [{"op": "delete", "path": "acme.bin"}]}),
        ("POST", "/v1/engagements/acme/chunks/missing", {"chunks": hashes["acme"][1]}),
        ("POST", "/v1/engagements/acme/locks", {"path": "acme.bin"}),
        ("POST", "/v1/engagements/acme/copies", {"copy": "c" * 32, "host": "x"}),
    ]
    for method, path, body in refusals:
        status, answer = as_branch(central, secret, method, path, body)
        assert status == 403, (path, status, answer)
        assert answer["error"] == "forbidden" and "branch" in answer["message"], answer
        assert secret not in json.dumps(answer)
    assert (office.central_head("other"), office.central_head("acme")) == head_before
    # the branch's read events are for a branch credential only, never a user's session
    status, answer = central.request("POST", "/v1/branch/reads", json_body={"events": []}, token=token)
    assert status == 403, answer
    # not a user: no sign-in with it
    status, answer = central.request("POST", "/v1/login", json_body={"user": "branch:office1", "password": secret})
    assert status == 401, answer
    assert secret not in central.log_text()
    assert "branch:office1 reads fetch of acme" in central.log_text()

    # a second branch's credential, removed: refused at once
    spare = tmp_path / "office2.credential"
    admin_ok(central, "branch", "add", "office2", "--credential-file", str(spare))
    admin_ok(central, "branch", "carry", "office2", "acme")
    second = spare.read_text().strip()
    assert as_branch(central, second, "POST", "/v1/engagements/acme/chunks/fetch", {"chunks": hashes["acme"][1]})[0] == 200
    listing = json.loads(admin_ok(central, "branch", "list", "--json"))
    assert {b["name"]: b["carries"] for b in listing} == {"office1": ["acme"], "office2": ["acme"]}
    admin_ok(central, "branch", "remove", "office2")
    status, answer = as_branch(central, second, "POST", "/v1/engagements/acme/chunks/fetch", {"chunks": hashes["acme"][1]})
    assert status == 403 and "revoked" in answer["message"], answer
    audit = admin_ok(central, "audit", "export", "--global", "--format", "json")
    assert "branch_remove" in audit and "branch_carry" in audit
    # the prefetch's reads are in acme's read chain, by the branch
    rows = json.loads(admin_ok(central, "audit", "export", "acme", "--format", "json"))["records"]
    by_branch = {(r["event"], r["actor"]) for r in rows if r["actor"].startswith("branch:")}
    assert {("branch_fetch", "branch:office1"), ("branch_manifests", "branch:office1")} <= by_branch
    assert not any(r["actor"].startswith("branch:") for r in json.loads(
        admin_ok(central, "audit", "export", "other", "--format", "json"))["records"])


def test_a_branch_refuses_a_credential_others_can_read(office: CarryOffice, tmp_path: Path) -> None:
    loose = tmp_path / "loose.credential"
    loose.write_text(office.secret + "\n")
    loose.chmod(0o644)
    config = _config(
        office.standby.url(office.database),
        f"[branch]\ncentral = https://127.0.0.1:{office.relay.port}\ncredential_file = {loose}\n",
    )
    with pytest.raises(DaemonStartError) as refused:
        running_daemon(tmp_path, config_text=config, name="loose")
    assert "may be read by others (mode 0644): chmod 600 it" in str(refused.value)
    assert office.secret not in str(refused.value)


def test_a_carried_engagement_clones_with_the_link_down(office: CarryOffice, tmp_path: Path) -> None:
    alice = user(tmp_path, "alice", office.central)
    at_central = tmp_path / "alice-down"
    ok(alice.run("clone", f"{office.central.url}/acme", str(at_central)))
    written = fill(at_central, {"Before the cut.bin": 200_000})
    ok(alice.run("sync", str(at_central)))
    office.wait_carried("acme", office.central_head("acme"))
    erin = user(tmp_path, "erin", office.branch)  # signed in before the cut: a replicated session
    copy = tmp_path / "erin"
    office.relay.stop()
    office.wal_link.stop()
    try:
        wait_for(lambda: office.branch.request("GET", "/healthz")[1]["branch"]["central"] == "unreachable")
        ok(erin.run("--attempts", "1", "clone", f"{office.branch.url}/acme", str(copy)))
        files = sorted(p.name for p in at_central.iterdir() if p.is_file())
        assert sorted(p.name for p in copy.iterdir() if p.is_file() and not p.name.startswith(".")) == files
        assert digests(copy, files) == digests(at_central, files)
        assert digests(copy, list(written)) == written
        assert office.prefetch()["state"] == "link_down" or office.prefetch()["state"] == "idle"
        # a user without a session cannot sign in while the link is down
        done = user_login_fails(tmp_path, "carol", office.branch)
        assert done.returncode != 0
    finally:
        office.wal_link.start()
        office.relay.start()
    wait_for(lambda: office.branch.request("GET", "/healthz")[1]["branch"]["central"] == "reachable")
    ok(erin.run("sync", str(copy)))  # its first contact registers the copy at central
    done = office.central.admin("copies", "list", "acme", "--json")
    assert done.returncode == 0, done.stderr
    assert any(c["user"] == "erin" for c in json.loads(done.stdout)), done.stdout


def user_login_fails(tmp_path: Path, name: str, server: Daemon) -> Any:
    from test_cli_client import Client

    home = tmp_path / f"home-nologin-{name}"
    home.mkdir()
    return Client(home).run(
        "--attempts", "1", "login", server.url, "--user", name, "--password-stdin",
        "--trust-fingerprint", server.fingerprint, input=PASSWORD + "\n",
    )


def cache_on_disk(daemon: Daemon) -> int:
    return sum(p.stat().st_size for p in (daemon.data_dir / "chunks").rglob("*.pack"))


def test_the_cache_is_trimmed_under_its_limit_and_a_later_pull_fetches_again(office: CarryOffice, tmp_path: Path) -> None:
    alice, carol = user(tmp_path, "alice", office.central), user(tmp_path, "carol", office.branch)
    at_central, at_branch = tmp_path / "alice-other", tmp_path / "carol-other"
    ok(alice.run("clone", f"{office.central.url}/other", str(at_central)))
    ok(carol.run("clone", f"{office.branch.url}/other", str(at_branch)))
    written: dict[str, str] = {}
    for step in range(4):  # 4 x 800 kB of a non-carried engagement, pulled at the branch
        written |= fill(at_central, {f"Year {step}.bin": 800_000})
        ok(alice.run("sync", str(at_central)))
        office.standby.wait_replayed()
        ok(carol.run("sync", str(at_branch)))
    assert digests(at_branch, list(written)) == written
    wait_for(lambda: cache_on_disk(office.branch) <= CACHE_MAX, timeout=60)
    status, health = office.branch.request("GET", "/healthz")
    assert health["branch"]["cache_bytes"] <= CACHE_MAX == health["branch"]["cache_max_bytes"]
    print(f"cache after pulling 3.2 MB of a non-carried engagement: {cache_on_disk(office.branch)}"
          f" bytes on disk (limit {CACHE_MAX})")

    # the carried engagement's head was kept: a clone of it still moves no chunk
    office.relay.reset()
    ok(carol.run("clone", f"{office.branch.url}/acme", str(tmp_path / "carol-acme")))
    assert office.relay.to_client < 20_000, office.relay.to_client
    # the oldest year was trimmed: a new copy fetches it again from central, and gets it right
    office.relay.reset()
    again = tmp_path / "carol-other-again"
    ok(carol.run("clone", f"{office.branch.url}/other", str(again)))
    assert digests(again, list(written)) == written
    assert office.relay.to_client >= 800_000, office.relay.to_client
    wait_for(lambda: cache_on_disk(office.branch) <= CACHE_MAX, timeout=60)


def branch_reads(office: CarryOffice, reader: str) -> list[dict[str, Any]]:
    """The download events central's audit trail has from ``reader`` at the branch."""
    rows = json.loads(admin_ok(office.central, "audit", "export", "acme", "--format", "json"))["records"]
    out = []
    for row in rows:
        detail = json.loads(row["detail"])
        if row["event"] == "download" and row["actor"] == reader and detail.get("via") == "branch:office1":
            out.append(row | {"detail": detail})
    return out


def spooled(office: CarryOffice) -> list[Path]:
    return sorted((office.branch.data_dir / "read-spool").glob("*.jsonl"))


def test_read_events_at_the_branch_reach_central_and_wait_out_a_cut(office: CarryOffice, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    dave = user(tmp_path, "dave", office.branch)
    ok(dave.run("clone", f"{office.branch.url}/acme", str(tmp_path / "dave")))
    wait_for(lambda: len(branch_reads(office, "dave")) > 0, timeout=60)
    files = [p for p in (tmp_path / "dave").iterdir() if p.is_file()]
    assert len(branch_reads(office, "dave")) >= len(files)  # one download per file, at least

    office.relay.stop()
    office.wal_link.stop()
    try:
        wait_for(lambda: office.branch.request("GET", "/healthz")[1]["branch"]["central"] == "unreachable")
        ok(dave.run("--attempts", "1", "clone", f"{office.branch.url}/acme", str(tmp_path / "dave-offline")))
        wait_for(lambda: len(spooled(office)) > 0)  # durably kept while central is out of reach
        kept = sum(len(p.read_text().splitlines()) for p in spooled(office))
        assert kept >= len(files)
        assert (office.branch.data_dir / "read-spool").stat().st_mode & 0o077 == 0
        before = len(branch_reads(office, "dave"))
        cut_ended = datetime.now(UTC)
    finally:
        office.wal_link.start()
        office.relay.start()
    wait_for(lambda: not spooled(office), timeout=60)
    rows = branch_reads(office, "dave")
    assert len(rows) >= before + kept
    late = [r for r in rows[before:] if datetime.fromisoformat(r["time"]) < cut_ended]
    assert len(late) >= kept  # recorded with the time of the read, not of the delivery
    assert all(r["detail"].get("address") for r in late)
