"""rsync's daemon over loopback as the bandwidth baseline: bytes on the wire from ``--stats``."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RsyncResult:
    sent: int
    received: int
    seconds: float

    @property
    def total(self) -> int:
        return self.sent + self.received


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RsyncDaemon:
    """An rsync daemon on 127.0.0.1 serving one writable module, started and stopped by us."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.module_dir = workdir / "module"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RsyncDaemon:
        self.module_dir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "rsyncd.conf"
        conf.write_text(
            f"use chroot = no\nuid = root\ngid = root\npid file = {self.workdir}/rsyncd.pid\n"
            f"[bench]\npath = {self.module_dir}\nread only = no\n"
        )
        self.proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={self.port}",
             "--address=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)  # polling a port that is coming up, bounded by the deadline
        raise RuntimeError("rsync daemon did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)

    def push(self, src: Path, *, compress: bool = False, extra: tuple[str, ...] = ()) -> RsyncResult:
        args = ["rsync", "-a", "--delete", "--stats", "--no-inc-recursive", *extra]
        if compress:
            args.append("-z")
        args += [f"{src}/", f"rsync://127.0.0.1:{self.port}/bench/"]
        start = time.perf_counter()
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - start
        sent = int(re.search(r"Total bytes sent: ([\d,.]+)", out).group(1).replace(",", "").replace(".", ""))
        received = int(re.search(r"Total bytes received: ([\d,.]+)", out).group(1).replace(",", "").replace(".", ""))
        return RsyncResult(sent, received, seconds)

    def pull(self, dest: Path, *, compress: bool = False) -> RsyncResult:
        """Pull the module into ``dest`` (the download direction); bytes from ``--stats``."""
        args = ["rsync", "-a", "--delete", "--stats", "--no-inc-recursive"]
        if compress:
            args.append("-z")
        args += [f"rsync://127.0.0.1:{self.port}/bench/", f"{dest}/"]
        start = time.perf_counter()
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        seconds = time.perf_counter() - start
        sent = int(re.search(r"Total bytes sent: ([\d,.]+)", out).group(1).replace(",", "").replace(".", ""))
        received = int(re.search(r"Total bytes received: ([\d,.]+)", out).group(1).replace(",", "").replace(".", ""))
        return RsyncResult(sent, received, seconds)
