"""Regenerate the figures table of docs/reliability.md by running the reliability tests.

    python bench/reliability_figures.py            # CI size (about 4 minutes on 2 vCPU)
    python bench/reliability_figures.py --long     # SMARTSYNC_LONG=1: thousands of steps

Runs tests/integration/test_{model_convergence,crash_safety,errors_not_deletions,
hostile_input,api_fuzz}.py with ``SMARTSYNC_FIGURES`` pointing at a scratch file (each test
appends its counts there), then replaces the block between the ``figures`` markers of
docs/reliability.md. "Crashes" and "lost writes" are 0 only because every test passed: a
failing run writes nothing and exits non-zero with pytest's output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- figures:start -->", "<!-- figures:end -->"
TESTS = [
    "tests/integration/test_model_convergence.py",
    "tests/integration/test_crash_safety.py",
    "tests/integration/test_errors_not_deletions.py",
    "tests/integration/test_hostile_input.py",
    "tests/integration/test_api_fuzz.py",
]


def machine() -> str:
    cpus = os.cpu_count() or 0
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpus} vCPU {model}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def table(figures: dict[str, dict[str, int]], seconds: float, long: bool) -> str:
    m = figures.get("model_convergence", {})
    c = figures.get("crash_safety", {})
    e = figures.get("errors_not_deletions", {})
    h = figures.get("hostile_input", {})
    f = figures.get("api_fuzz", {})
    rows = [
        ("model steps run (rules + invariant checks)", m.get("steps", 0)),
        ("model examples (fresh engagement, 2-4 copies each)", m.get("examples", 0)),
        ("daemon SIGKILLs survived", m.get("daemon_kills", 0) + c.get("daemon_kills", 0)),
        ("daemon restarts (SIGTERM) survived", m.get("daemon_restarts", 0)),
        ("client SIGKILLs mid-pull survived", c.get("client_kills", 0)),
        ("hidden temp files those kills orphaned", c.get("temp_files_orphaned_by_kills", 0)),
        ("... left after the next sync (it removes them)", c.get("temp_files_left_by_kills", 0)),
        ("fsck runs after kills (all clean)", c.get("fsck_runs", 0)),
        ("acknowledged writes checked for loss",
         m.get("acked_writes_checked", 0) + c.get("acked_writes_checked", 0)),
        ("error cases (503 mid-pull, emptied/missing folder, full disk)", e.get("error_cases", 0)),
        ("hostile inputs tried", h.get("bad_inputs", 0)),
        ("fuzzed requests (structured + raw)", f.get("bad_inputs", 0)),
        ("5xx answers / daemon crashes", 0),
        ("lost writes / torn files", 0),
    ]
    mode = "SMARTSYNC_LONG=1" if long else "CI size"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run {when}, {mode}, {seconds:.0f} s wall clock; {machine()}.",
        "",
        "| figure | count |",
        "|---|---|",
        *(f"| {name} | {value:,} |" for name, value in rows),
        "",
        "Hostile inputs by kind: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(h.items()) if k != "bad_inputs") + ".",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="SMARTSYNC_LONG=1 (thousands of steps)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "figures.jsonl"
        env = {**os.environ, "SMARTSYNC_FIGURES": str(target)}
        if args.long:
            env["SMARTSYNC_LONG"] = "1"
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", *TESTS],
                              cwd=ROOT, env=env)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            print("reliability tests failed: figures not written", file=sys.stderr)
            return done.returncode
        figures: dict[str, dict[str, int]] = defaultdict(dict)
        for line in target.read_text().splitlines():
            record = json.loads(line)
            name = record.pop("test")
            for k, v in record.items():
                figures[name][k] = figures[name].get(k, 0) + int(v)
    text = table(figures, seconds, args.long)
    print(text)
    if not args.no_write:
        doc = DOC.read_text()
        head, rest = doc.split(START, 1)
        _old, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
