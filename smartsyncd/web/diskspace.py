"""Free space of the daemon's storage folders (the data folder, the chunk folder).

``free_space`` and ``disk_report`` are blocking (``statvfs``): run them on a thread pool.
``free_space`` feeds the ``smartsync_store_free_bytes`` gauge (web/metrics.py); ``disk_report``
is the ``disk`` part of ``/healthz`` (web/health.py), with a warning for each folder whose file
system has less than ``[storage] warn_free_mb`` free.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def free_space(folders: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """``{label: (bytes free to the daemon's account, file system size)}`` per folder; a folder
    that cannot be read (a NAS that went away) is left out."""
    out: dict[str, tuple[int, int]] = {}
    for label, path in folders.items():
        try:
            st = os.statvfs(path)
        except OSError:
            continue
        out[label] = (st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
    return out


def disk_report(folders: Mapping[str, str], warn_bytes: int) -> dict[str, object]:
    """``{"disk": {label: {"free_bytes", "size_bytes", "low"}}, "warnings": [...]}``."""
    disk: dict[str, dict[str, object]] = {}
    warnings: list[str] = []
    space = free_space(folders)
    for label in folders:
        if label not in space:
            disk[label] = {"error": "cannot read the folder's file system"}
            warnings.append(f"the {label} folder's free space cannot be read")
            continue
        free, size = space[label]
        low = free < warn_bytes
        disk[label] = {"free_bytes": free, "size_bytes": size, "low": low}
        if low:
            warnings.append(
                f"the {label} folder has {free // (1 << 20)} MiB free, below the "
                f"{warn_bytes // (1 << 20)} MiB of [storage] warn_free_mb"
            )
    return {"disk": disk, "warnings": warnings}
