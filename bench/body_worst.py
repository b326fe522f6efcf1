"""CPU of the worst JSON body at each route's limit: the depth check and the parse (issue 14).

    python bench/body_worst.py [--runs N] [--old]

For each route, builds the adversarial bodies (a ``"`` then ``\\"`` to the limit, with and
without a closing quote; 32-deep nesting repeated; empty lists; empty strings; long escapes)
and prints the thread CPU of ``bodies.parse_json`` (depth scan + ``json.loads``) for the worst
one, medians of N runs, and whether it runs on the reactor (bodies of 16 KiB or less) or the
CPU pool. ``--old`` also times the depth check this replaced (the backtracking regex, copied
below) on the escaped-quote body at 24 KB and 48 KB and extrapolates it quadratically to each
limit: measuring it at 1 MiB would take over half an hour. Commit bodies are measured at 16 MiB
(the limit is 64 MiB; the work is linear, x4) to keep the run short on a shared machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable

from smartsyncd.core.errors import BadRequest
from smartsyncd.web.bodies import parse_json
from smartsyncd.web.limits import Limits

INLINE = 16 * 1024  # web/app.py _INLINE_COMMIT_BYTES: larger bodies parse on the CPU pool

# The check this replaced (smartsyncd/web/bodies.py before issue 14), for --old.
_OLD_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_OLD_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OLD_PAIR = re.compile(rb"\[\]|\{\}")


def old_check_depth(body: bytes, max_depth: int = 32) -> None:
    skeleton = _OLD_STRING.sub(b"", body).translate(None, _OLD_NOT_BRACKET)
    for _ in range(max_depth):
        if not skeleton:
            return
        skeleton, n = _OLD_PAIR.subn(b"", skeleton)
        if n == 0:
            break


def bodies(size: int) -> dict[str, bytes]:
    n = size // 2
    return {
        "escaped quotes, open": b'{"user":"' + b'\\"' * (n - 6),
        "escaped quotes, closed": b'{"user":"' + b'\\"' * (n - 8) + b'"}',
        "32-deep, repeated": b"[" + (b"[" * 30 + b"0" + b"]" * 30 + b",") * (size // 62 - 1) + b"0]",
        "empty lists": b"[" + b"[]," * (size // 3 - 1) + b"[]]",
        "empty strings": b"[" + b'"",' * (size // 3 - 1) + b'""]',
        "escaped backslashes": b'["' + b"\\\\" * (n - 3) + b'"]',
    }


def cpu(f: Callable[[], object]) -> float:
    start = time.thread_time()
    try:
        f()
    except BadRequest:
        pass
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--old", action="store_true")
    args = parser.parse_args()
    limits = Limits()
    # (route, size measured, the old limit, where the old check ran)
    routes = [
        ("any JSON body parsed inline (<= 16 KiB)", INLINE, INLINE, "reactor"),
        ("POST /v1/login", limits.login_json, 1 << 20, "reactor"),
        ("POST .../chunks/missing, .../chunks/fetch", limits.small_json, 1 << 20, "reactor"),
        ("POST .../commit (at 16 MiB of 64)", 16 << 20, 64 << 20, "CPU pool"),
    ]
    old_rate = None
    if args.old:
        # quadratic: seconds = k * bytes^2, k from the 48 KB body (24 KB printed as a check)
        for size in (24_000, 48_000):
            body = b'{"user":"' + b'\\"' * (size // 2)
            t = statistics.median(cpu(lambda b=body: old_check_depth(b)) for _ in range(args.runs))
            print(f"old depth check, escaped quotes, {len(body)} bytes: {t:.2f} s")
            old_rate = t / len(body) ** 2
    print(f"{'route':44} {'limit':>10} {'worst body':24} {'CPU':>9}  where")
    for route, limit, old_limit, old_where in routes:
        worst = ("", 0.0)
        for name, body in bodies(limit).items():
            t = statistics.median(cpu(lambda b=body: parse_json(b)) for _ in range(args.runs))
            if t > worst[1]:
                worst = (name, t)
        where = "reactor" if limit <= INLINE else "CPU pool"
        print(f"{route:44} {limit:>10} {worst[0]:24} {worst[1] * 1000:7.1f} ms  {where}")
        if old_rate is not None:
            print(f"{'  before (old regex, reactor, extrapolated)':44} {old_limit:>10} "
                  f"{'escaped quotes, open':24} {old_rate * old_limit ** 2:7.1f} s   {old_where}")


if __name__ == "__main__":
    main()
