"""Peak memory of the ``smartsync`` client and of the daemon for one large file, up and down.

    python bench/upload_memory.py [--sizes 512,2048] [--no-download]

For each size (MiB): a fresh ``twistd smartsync`` on loopback (no relay), a fresh engagement, the
real CLI: ``clone`` (empty), write one seeded random file, ``sync`` under ``/usr/bin/time -v``
(the client's peak RSS), then ``clone`` of the engagement into a second folder (the download's
peak RSS). The daemon's peak is its ``VmHWM`` from /proc after each step, reset before it
(``clear_refs``), so the figure belongs to that transfer; "at start" is its peak from start-up
and sign-in. A fresh daemon per size.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import datagen  # noqa: E402
from daemon import running_daemon  # noqa: E402

MiB = 1 << 20
PASSWORD = "bench password 1"


def smartsync_cmd() -> list[str]:
    script = Path(sys.executable).with_name("smartsync")
    return [str(script)] if script.exists() else [
        sys.executable, "-c", "from smartsyncd.cli.client import main; main()"]


def vm_hwm(pid: int) -> int:
    """Peak resident bytes of a live process (VmHWM)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]


CLIENT_ENV: dict[str, str] = {}  # --client-env: extra environment of the measured client runs


def reset_hwm(pid: int) -> None:
    """Start a new ``VmHWM`` from the current RSS (Linux: clear_refs 5), so the next peak read
    belongs to the step that follows, not to start-up and sign-in (the password hash)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def timed(cmd: list[str], stdin: str = "") -> tuple[float, int]:
    """Run under /usr/bin/time -v: (seconds, peak RSS bytes)."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], input=stdin, capture_output=True,
                          text=True, env={**os.environ, **CLIENT_ENV})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd}: {done.returncode}\n{done.stdout}\n{done.stderr}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    return seconds, peak * 1024


def timeline(cmd: list[str], every: float = 0.25) -> list[tuple[float, int]]:
    """Run ``cmd`` sampling its resident memory (VmRSS) every ``every`` seconds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    samples = []
    while proc.poll() is None:
        try:
            text = Path(f"/proc/{proc.pid}/status").read_text()
            rss = int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]
            samples.append((time.perf_counter() - start, rss))
        except (OSError, AttributeError):
            pass
        time.sleep(every)  # sampling interval, not synchronization
    return samples


def measure(work: Path, size_mib: int, download: bool, trace: bool = False) -> dict[str, float]:
    daemon = running_daemon(work / f"server-{size_mib}")
    try:
        daemon.add_user("bench", PASSWORD)
        eng = daemon.new_engagement(f"mem-{size_mib}", editors=["bench"])
        config = work / f"config-{size_mib}"
        cli = [*smartsync_cmd(), "--quiet", "--config-dir", str(config)]
        subprocess.run([*cli, "--trust-fingerprint", daemon.fingerprint, "login", daemon.url,
                        "--user", "bench", "--password-stdin"], input=PASSWORD + "\n",
                       text=True, check=True, capture_output=True)
        mine = work / f"up-{size_mib}"
        subprocess.run([*cli, "clone", f"{daemon.url}/{eng}", str(mine)], check=True,
                       capture_output=True)
        datagen.write_big_file(mine / "archive.bin", size_mib * MiB, seed=size_mib)
        subprocess.run(["sync"], check=True)
        assert daemon.process is not None
        before = vm_hwm(daemon.process.pid)
        reset_hwm(daemon.process.pid)
        if trace:
            for at, rss in timeline([*cli, "sync", str(mine)]):
                print(f"  {at:6.2f} s  {rss / 1e6:6.0f} MB", flush=True)
        up_s, up_rss = timed([*cli, "sync", str(mine)]) if not trace else (0.0, 0)
        daemon_up = vm_hwm(daemon.process.pid)
        row = {"size": size_mib, "up_s": up_s, "up_rss": up_rss, "daemon_start": before,
               "daemon_up": daemon_up}
        (mine / "archive.bin").unlink()  # disk: only the server's and the download's copy
        if download:
            reset_hwm(daemon.process.pid)
            down_s, down_rss = timed([*cli, "clone", f"{daemon.url}/{eng}",
                                      str(work / f"down-{size_mib}")])
            row.update(down_s=down_s, down_rss=down_rss, daemon_down=vm_hwm(daemon.process.pid))
            shutil.rmtree(work / f"down-{size_mib}", ignore_errors=True)
        return row
    finally:
        daemon.stop()
        shutil.rmtree(work / f"server-{size_mib}", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,2048", help="file sizes in MiB")
    parser.add_argument("--no-download", action="store_true")
    parser.add_argument("--timeline", action="store_true",
                        help="print the client's RSS over the upload instead of the table")
    parser.add_argument("--client-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the measured client runs (e.g. malloc tunables)")
    args = parser.parse_args()
    CLIENT_ENV.update(item.split("=", 1) for item in args.client_env)
    work = Path(tempfile.mkdtemp(prefix="smartsync-mem-"))
    try:
        print("| file | upload time | client peak RSS, upload | daemon peak RSS, upload "
              "| download time | client peak RSS, download | daemon peak RSS, download |")
        print("|---|---|---|---|---|---|---|")
        for size in (int(s) for s in args.sizes.split(",")):
            r = measure(work, size, not args.no_download and not args.timeline, args.timeline)
            down = (f"{r['down_s']:.1f} s | {r['down_rss'] / 1e6:.0f} MB | "
                    f"{r['daemon_down'] / 1e6:.0f} MB" if "down_s" in r else "- | - | -")
            print(f"| {size} MiB | {r['up_s']:.1f} s | {r['up_rss'] / 1e6:.0f} MB | "
                  f"{r['daemon_up'] / 1e6:.0f} MB (at start {r['daemon_start'] / 1e6:.0f} MB) | "
                  f"{down} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
