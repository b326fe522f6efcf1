"""Free space of the daemon's storage folders (the data folder, the chunk folder).

``free_space`` is blocking (``statvfs``): run it on a thread pool. Its answer feeds the
``smartsync_store_free_bytes`` gauge (web/metrics.py).
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
