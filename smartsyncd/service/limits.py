"""Process limits the daemon sets for itself at start-up.

Each parked long-poll holds one open file (its socket), so a firm with a few thousand staff
needs more than the usual soft limit of 1,024. The daemon raises its soft ``RLIMIT_NOFILE``
to the hard limit (which the administrator controls: ``LimitNOFILE`` in the systemd unit).
"""

from __future__ import annotations

import sys


def raise_open_file_limit() -> tuple[int, int] | None:
    """Raise the soft open-file limit to the hard one; return (before, after), None if N/A."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if wanted <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, wanted
