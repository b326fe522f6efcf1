"""Packaging shim: metadata lives in pyproject.toml.

Kept so that ``pip install -e . --config-settings editable_mode=compat`` (which puts the
checkout itself on sys.path, so twistd finds ``twisted/plugins/smartsync_plugin.py``) and
older tooling both work.
"""

from setuptools import setup

setup()
