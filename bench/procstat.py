"""CPU seconds of a process from /proc (Linux), shared by the benchmark scripts.

User + system time of every thread of ``pid`` so far; steadier than wall time on a shared
machine, so the scripts report it beside their timings.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
