"""Per-user client settings: pinned server fingerprints, CA files, users and session tokens.

Lives in the platform's settings folder (``default_config_dir``: XDG on Linux, %APPDATA% on
Windows, Application Support on macOS), file ``config.json``; the folder
is 0700 and the file 0600 because it holds bearer tokens. Writes are atomic (temp file, fsync,
rename, fsync the folder), so a crash leaves either the old or the new file, never half of one.
The file is small and read/written by the CLI before or between network calls, so plain blocking
I/O is used here. With the keychain opt-in (``keychain``, client/keychain.py) the token lives in
the OS keychain and the file records only the keychain's service name.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from smartsyncd.client import osfs
from smartsyncd.client.errors import UsageError
from smartsyncd.client.keychain import KEYCHAIN_SERVICE, delete_token, load_token, store_token
from smartsyncd.client.osfs import open_fd, replace, sync_file, sync_folder, unlink

APP_NAME = "smartsync"
CONFIG_FILE = "config.json"
_VERSION = 1


def default_config_dir() -> Path:
    """Where the platform keeps per-user settings (platformdirs): ``$XDG_CONFIG_HOME/smartsync``
    (default ``~/.config/smartsync``) on Linux, ``%APPDATA%\\smartsync`` on Windows,
    ``~/Library/Application Support/smartsync`` on macOS."""
    if sys.platform not in ("win32", "darwin"):
        # platformdirs takes a relative XDG_CONFIG_HOME as is; the XDG spec says ignore it
        base = os.environ.get("XDG_CONFIG_HOME") or ""
        root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
        return root / APP_NAME
    return Path(platformdirs.user_config_dir(APP_NAME, appauthor=False, roaming=True))


def config_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The user's smartsync config folder, created with mode 0700 when missing."""
    path = Path(override) if override is not None else default_config_dir()
    osfs.make_folders(path, 0o700, exist_ok=True)
    if stat.S_IMODE(osfs.stat_path(path).st_mode) != 0o700:
        osfs.chmod(path, 0o700)
    return path


def server_key(url: str) -> str:
    """The canonical form of a server URL used as the settings key (``https://host:port``)."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise UsageError(f"server URL must look like https://HOST[:PORT], not {url!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"bad port in server URL {url!r}") from exc
    netloc = host if port in (None, 443) else f"{host}:{port}"
    return urlunsplit(("https", netloc, "", "", ""))


@dataclass
class ServerSettings:
    """What the user's config records about one server."""

    url: str
    fingerprint: str | None = None
    ca_file: str | None = None
    user: str | None = None
    token: str | None = None
    bwlimit: int | None = None  # KiB/s for transfers with this server (--bwlimit overrides)
    sso: str | None = None  # Kerberos service (HTTP@host) when signed in with single sign-on
    keychain: str | None = None  # the OS keychain's service name holding the token (opt-in)


class UserConfig:
    """The settings file, loaded in memory; call :meth:`save` to persist changes."""

    def __init__(self, directory: Path, servers: dict[str, ServerSettings] | None = None) -> None:
        self.directory = directory
        self.servers: dict[str, ServerSettings] = servers or {}

    @property
    def path(self) -> Path:
        return self.directory / CONFIG_FILE

    @classmethod
    def load(cls, directory: str | os.PathLike[str] | None = None) -> UserConfig:
        """Read the config (an absent file is an empty config; a damaged one is an error)."""
        folder = config_dir(directory)
        path = folder / CONFIG_FILE
        try:
            raw = osfs.read_bytes(path)
        except FileNotFoundError:
            return cls(folder)
        try:
            data = json.loads(raw)
            servers = {
                server_key(url): ServerSettings(
                    url=server_key(url),
                    fingerprint=_opt_str(entry, "fingerprint"),
                    ca_file=_opt_str(entry, "ca_file"),
                    user=_opt_str(entry, "user"),
                    token=_opt_str(entry, "token"),
                    bwlimit=_opt_int(entry, "bwlimit"),
                    sso=_opt_str(entry, "sso"),
                    keychain=_opt_str(entry, "keychain"),
                )
                for url, entry in data["servers"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, UsageError) as exc:
            raise UsageError(f"settings file {path} is damaged ({exc}); fix or remove it") from exc
        return cls(folder, servers)

    def server(self, url: str) -> ServerSettings:
        """The settings for ``url`` (a fresh, unsaved entry when the server is new)."""
        key = server_key(url)
        return self.servers.get(key) or ServerSettings(url=key)

    def _entry(self, url: str) -> ServerSettings:
        key = server_key(url)
        return self.servers.setdefault(key, ServerSettings(url=key))

    def pin(self, url: str, fingerprint: str) -> None:
        self._entry(url).fingerprint = fingerprint

    def set_ca_file(self, url: str, ca_file: str | None) -> None:
        self._entry(url).ca_file = ca_file

    def set_token(
        self, url: str, user: str, token: str, sso: str | None = None, *,
        keychain: bool | None = None,
    ) -> None:
        """Record a sign-in; ``sso`` is the Kerberos service of a single sign-on (re-used to
        sign in again silently), None for a password sign-in. ``keychain`` True keeps the token
        in the OS keychain from now on, False in this file again, None as the server's setting
        was. Raises KeychainError (nothing changed) when the keychain cannot store it."""
        entry = self._entry(url)
        use_keychain = bool(entry.keychain) if keychain is None else keychain
        if use_keychain:
            service = entry.keychain or KEYCHAIN_SERVICE
            store_token(entry.url, user, token, service)
            if entry.keychain and entry.user and entry.user != user:
                delete_token(entry.url, entry.user, entry.keychain)
            entry.keychain, entry.token = service, None
        else:
            if entry.keychain and entry.user:
                delete_token(entry.url, entry.user, entry.keychain)
            entry.keychain, entry.token = None, token
        entry.user = user
        entry.sso = sso

    def token(self, url: str) -> str | None:
        """The session token for ``url``: from this file, or read from the OS keychain when
        the server's token is kept there (KeychainError when it cannot be read)."""
        entry = self.server(url)
        if entry.keychain is None:
            return entry.token
        if entry.user is None:
            return None
        return load_token(entry.url, entry.user, entry.keychain)

    def forget_token(self, url: str) -> None:
        """Sign out locally: drop the token (deleting it from the keychain when kept there;
        KeychainError and nothing changed when the keychain refuses). The keychain opt-in stays."""
        key = server_key(url)
        if key in self.servers:
            entry = self.servers[key]
            if entry.keychain and entry.user:
                delete_token(entry.url, entry.user, entry.keychain)
            entry.token = None
            entry.sso = None  # signing out also stops silent single sign-on

    def to_json(self) -> dict[str, object]:
        return {
            "version": _VERSION,
            "servers": {
                key: {
                    k: v for k, v in asdict(entry).items()
                    if k != "url" and v is not None and not (k == "token" and entry.keychain)
                }
                for key, entry in sorted(self.servers.items())
            },
        }

    def save(self) -> None:
        """Write the file atomically with mode 0600."""
        data = (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()
        write_private_file(self.path, data)


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file is readable by its owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    unlink(tmp, missing_ok=True)  # left by a crashed run with the same pid
    fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            sync_file(fd)
        finally:
            os.close(fd)
        replace(tmp, path)
    except BaseException:
        unlink(tmp, missing_ok=True)
        raise
    sync_folder(path.parent)


def _opt_int(entry: Mapping[str, object], key: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{key} must be a whole number >= 0")
    return value


def _opt_str(entry: Mapping[str, object], key: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value
