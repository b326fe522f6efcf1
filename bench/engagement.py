"""A realistic engagement folder and a day of typical edits, seeded (bench/run.py's last rows).

An audit engagement holds a few hundred files: Word documents and spreadsheets (zip containers:
their bytes look random, sizes 20 KB-2 MB), PDFs of client evidence (incompressible, up to a
few MB), CSV ledger exports (text, compressible, up to several MB), small databases (pages of
records, 2-16 MB) and short notes. A day of work re-saves some documents (a zip re-save changes
a stretch of the file and its size), edits spreadsheet cells, changes a few database pages,
appends rows to exports, adds and removes evidence, and files a few documents into other
folders. Both generators are deterministic for a seed, so smartsyncd and rsync see the same
bytes.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB

FOLDERS = [
    "A - Planning", "B - Cash and bank", "C - Receivables", "D - Inventory", "E - Fixed assets",
    "F - Payables", "G - Payroll", "H - Tax", "Permanent file", "Correspondence",
    "Client evidence/Bank statements", "Client evidence/Invoices", "Client evidence/Contracts",
]
ACCOUNTS = ["fees", "rent", "travel", "payroll", "utilities", "insurance", "consulting", "repairs"]


@dataclass
class FolderStats:
    files: int = 0
    bytes: int = 0


def _touch_later(path: Path) -> None:
    st = os.stat(path)
    later = st.st_mtime_ns + 2_000_000_000  # past rsync's whole-second quick check
    os.utime(path, ns=(later, later))


def _text_rows(rng: random.Random, n_bytes: int, start: int = 0) -> bytes:
    pool = [
        f"{rng.randrange(1000, 9999)},{rng.choice(ACCOUNTS)},{rng.randrange(10**7) / 100:.2f},"
        f"{rng.randrange(-10**8, 10**8) / 100:.2f}"
        for _ in range(512)
    ]
    out: list[str] = []
    size = 0
    row = start
    pick = rng.choices(range(512), k=max(1, n_bytes // 40 + 1))
    while size < n_bytes:
        line = f"2026-{1 + row % 12:02d}-{1 + row % 28:02d},{row:07d},{pool[pick[row % len(pick)]]}\n"
        out.append(line)
        size += len(line)
        row += 1
    return "".join(out).encode()[:n_bytes]


def _db_pages(rng: random.Random, pages: int) -> bytes:
    """4 KiB pages of fixed-layout records (compresses several times): each page one of a pool
    of record layouts, stamped with its number and a few random bytes."""
    pool = []
    for _ in range(16):
        page = bytearray()
        while len(page) < 4096 - 64:
            page += f"{rng.choice(ACCOUNTS):<12}{rng.randrange(10**9):>10}".encode()
            page += rng.randrange(1 << 32).to_bytes(4, "big")
        pool.append(bytes(page))
    out = bytearray()
    for p in range(pages):
        body = pool[rng.randrange(16)]
        page = b"PG" + p.to_bytes(4, "big") + rng.randbytes(400) + body
        out += page[:4096].ljust(4096, b"\0")
    return bytes(out)


def _size(rng: random.Random, lo: int, hi: int) -> int:
    """Log-uniform between lo and hi: many small files, a few large ones."""
    return int(lo * (hi / lo) ** rng.random())


def write_engagement(root: Path, seed: int = 11, scale: float = 1.0) -> FolderStats:
    """Write the folder (about 300 files, 130 MB at scale 1) under ``root``."""
    rng = random.Random(seed)
    stats = FolderStats()
    kinds = [  # (count, suffix, min size, max size, content)
        (120, ".docx", 20 * KiB, 600 * KiB, "zip"),
        (70, ".xlsx", 30 * KiB, 2 * MiB, "zip"),
        (45, ".pdf", 60 * KiB, 4 * MiB, "zip"),
        (25, ".csv", 50 * KiB, 6 * MiB, "text"),
        (6, ".db", 2 * MiB, 16 * MiB, "db"),
        (40, ".txt", 1 * KiB, 12 * KiB, "text"),
    ]
    for count, suffix, lo, hi, content in kinds:
        for i in range(max(1, int(count * scale))):
            folder = root / rng.choice(FOLDERS)
            folder.mkdir(parents=True, exist_ok=True)
            size = _size(rng, lo, hi)
            if content == "zip":
                data = rng.randbytes(size)
            elif content == "text":
                data = _text_rows(rng, size)
            else:
                data = _db_pages(rng, max(1, size // 4096))
            path = folder / f"{suffix[1:].upper()} {i:03d} {rng.choice(ACCOUNTS)}{suffix}"
            path.write_bytes(data)
            stats.files += 1
            stats.bytes += len(data)
    return stats


def day_of_edits(root: Path, seed: int = 12) -> dict[str, int]:
    """Apply a day of typical edits to a folder written by ``write_engagement``."""
    rng = random.Random(seed)
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".smartsync" not in p.parts)
    by = {s: [p for p in files if p.suffix == s] for s in (".docx", ".xlsx", ".pdf", ".csv", ".db", ".txt")}
    done = {"resaved": 0, "db_pages": 0, "appended": 0, "added": 0, "deleted": 0, "moved": 0}
    for path in rng.sample(by[".docx"], 8) + rng.sample(by[".xlsx"], 6):
        # a re-save: one stretch rewritten (about a tenth of the file), a little growth
        data = bytearray(path.read_bytes())
        n = max(4 * KiB, len(data) // 10)
        at = rng.randrange(0, max(1, len(data) - n))
        data[at : at + n] = rng.randbytes(n + rng.randrange(0, 2 * KiB))
        path.write_bytes(bytes(data))
        _touch_later(path)
        done["resaved"] += 1
    for path in rng.sample(by[".db"], 2):
        with open(path, "r+b") as f:
            pages = os.fstat(f.fileno()).st_size // 4096
            for page in rng.sample(range(pages), min(pages, 24)):
                f.seek(page * 4096 + 16)
                f.write(_db_pages(rng, 1)[16:1024])
                done["db_pages"] += 1
        _touch_later(path)
    for path in rng.sample(by[".csv"], 3):
        with open(path, "ab") as f:
            f.write(_text_rows(rng, 40 * KiB, start=10**6))
        _touch_later(path)
        done["appended"] += 1
    for i in range(6):
        folder = root / "Client evidence/Invoices"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"Scan {i:02d} received.pdf").write_bytes(rng.randbytes(_size(rng, 100 * KiB, 2 * MiB)))
        done["added"] += 1
    for path in rng.sample(by[".txt"], 3):
        path.unlink()
        done["deleted"] += 1
    for path in rng.sample(by[".docx"] + by[".pdf"], 4):
        if path.exists():
            target = root / "Permanent file" / ("Moved " + path.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
            done["moved"] += 1
    return done
