"""The fixed glibc mmap threshold (runtime/malloctune.py): set once, a no-op elsewhere."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from smartsyncd.runtime import malloctune


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's threshold is glibc's")
def test_the_threshold_is_set_once_on_glibc() -> None:
    code = ("from smartsyncd.runtime.malloctune import fix_mmap_threshold as f; "
            "print(f(), f(), f(1 << 20))")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "True"]


def test_an_environment_setting_is_left_alone() -> None:
    code = "from smartsyncd.runtime.malloctune import fix_mmap_threshold as f; print(f())"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False"]
    assert malloctune.M_MMAP_THRESHOLD == -3


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's threshold is glibc's")
def test_the_heap_top_kept_is_set_once_and_an_environment_setting_left_alone() -> None:
    code = ("from smartsyncd.runtime.malloctune import keep_heap_top as k; "
            "print(k(), k(), k(1 << 20))")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True", "True"]
    env["MALLOC_TRIM_THRESHOLD_"] = "131072"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False", "False"]
