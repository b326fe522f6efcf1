"""Seeded benchmark data: a large random file and its edits, many small files, a CSV.

Every generator is deterministic for a given seed so smartsyncd and rsync move the same bytes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

MiB = 1 << 20


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def write_big_file(path: Path, size: int, seed: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * MiB)
            f.write(rng.randbytes(n))
            left -= n


def _newer_mtime(path: Path) -> None:
    """Move the mtime 2 s past its old value: an edit within the same second as the previous
    write would otherwise look unchanged to rsync's quick check (size + whole-second mtime)."""
    st = os.stat(path)
    later = st.st_mtime_ns + 2_000_000_000
    os.utime(path, ns=(later, later))


def flip_byte_in_middle(path: Path) -> None:
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    _newer_mtime(path)


def insert_at_start(path: Path, n: int = 100, seed: int = 7) -> None:
    data = path.read_bytes()
    path.write_bytes(random_bytes(n, seed) + data)
    _newer_mtime(path)


def append(path: Path, n: int = MiB, seed: int = 8) -> None:
    with open(path, "ab") as f:
        f.write(random_bytes(n, seed))
    _newer_mtime(path)


def write_small_files(root: Path, count: int = 10_000, size: int = 4096, folders: int = 100,
                      seed: int = 2) -> None:
    rng = random.Random(seed)
    for i in range(count):
        folder = root / f"folder{i % folders:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{i:05d}.bin").write_bytes(rng.randbytes(size))


def edit_small_files(root: Path, count: int = 10, seed: int = 3) -> None:
    rng = random.Random(seed)
    files = sorted(root.rglob("*.bin"))
    for path in rng.sample(files, count):
        data = bytearray(path.read_bytes())
        at = rng.randrange(len(data) - 100)
        data[at:at + 100] = rng.randbytes(100)
        path.write_bytes(bytes(data))
        _newer_mtime(path)


def write_csv(path: Path, size: int = 64 * MiB, seed: int = 4) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    accounts = [f"{rng.randrange(1000, 9999)}-{rng.randrange(100, 999)}" for _ in range(500)]
    with open(path, "w") as f:
        f.write("date,account,description,debit,credit,balance\n")
        written = 0
        row = 0
        while written < size:
            line = (f"2026-{1 + row % 12:02d}-{1 + row % 28:02d},{rng.choice(accounts)},"
                    f"Invoice {row:08d} {rng.choice(['fees', 'rent', 'travel', 'payroll'])},"
                    f"{rng.randrange(0, 10**6) / 100:.2f},{rng.randrange(0, 10**6) / 100:.2f},"
                    f"{rng.randrange(-10**8, 10**8) / 100:.2f}\n")
            f.write(line)
            written += len(line)
            row += 1


def edit_csv_rows(path: Path, fraction: float = 0.01, seed: int = 5) -> None:
    """Change one amount in ``fraction`` of the rows, spread over the file."""
    rng = random.Random(seed)
    lines = path.read_text().splitlines(keepends=True)
    for i in rng.sample(range(1, len(lines)), int(len(lines) * fraction)):
        fields = lines[i].rstrip("\n").split(",")
        fields[3] = f"{rng.randrange(0, 10**6) / 100:.2f}"
        lines[i] = ",".join(fields) + "\n"
    path.write_text("".join(lines))
    _newer_mtime(path)
