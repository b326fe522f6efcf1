"""Windows extended-length paths (``\\\\?\\``): a pure function, portable and tested on Linux.

Windows refuses paths over 260 characters (MAX_PATH) unless they carry the ``\\\\?\\`` prefix,
which also switches off Windows' own normalisation (``/`` to ``\\``, ``.`` and ``..``), so the
path is normalised here first. ``osfs`` applies it to the client's file calls on Windows only.
"""

from __future__ import annotations

import ntpath

EXTENDED_PREFIX = "\\\\?\\"
DEVICE_PREFIX = "\\\\.\\"
UNC_EXTENDED_PREFIX = EXTENDED_PREFIX + "UNC\\"


def extended_length(path: str) -> str:
    """``path`` in extended-length form: ``C:\\a\\b`` becomes ``\\\\?\\C:\\a\\b`` and
    ``\\\\server\\share\\a`` becomes ``\\\\?\\UNC\\server\\share\\a``; ``..``, ``.`` and ``/``
    are resolved first. A path already prefixed (``\\\\?\\`` or ``\\\\.\\``) is returned as is.
    Raises ValueError for a relative or drive-relative path (``a\\b``, ``\\a``, ``C:a``)."""
    if path.startswith((EXTENDED_PREFIX, DEVICE_PREFIX)):
        return path
    drive, rest = ntpath.splitdrive(path)
    if not drive or not rest.startswith(("\\", "/")):
        raise ValueError(f"not an absolute Windows path: {path!r}")
    normal = ntpath.normpath(path)
    if drive.startswith(("\\\\", "//")):
        return UNC_EXTENDED_PREFIX + normal[2:]
    return EXTENDED_PREFIX + normal
