"""service/limits.py: the daemon raises its soft open-file limit to the hard one."""

from __future__ import annotations

import resource

from smartsyncd.service.limits import raise_open_file_limit


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        before, after = raise_open_file_limit() or (0, 0)
        assert before == min(256, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == after
        assert after == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
