"""Server configuration: the ini file, embedded defaults and command-line overrides.

``load_config`` turns an optional ini file plus command-line overrides into one immutable
``ServerConfig``. Rules:

- No file: every default applies; the data folder is ``./data`` relative to the working
  directory.
- Relative paths in the file resolve against the file's folder (so a config file can be moved
  with its data); relative paths on the command line resolve against the working directory.
- Command-line values override the file.
- A bad value raises ``twisted.python.usage.UsageError`` naming ``[section] key`` (twistd and
  ``smartsync-admin`` print it as a usage error).

The daemon and ``smartsync-admin`` share this module so both find the same data folder.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.python.usage import UsageError

if TYPE_CHECKING:
    from smartsyncd.auth.kerberosconfig import KerberosConfig
    from smartsyncd.auth.ldapconfig import LdapConfig
    from smartsyncd.web.clientaddr import Network

DEFAULT_LISTEN = "ssl:8443"
DEFAULT_DATA_DIR = "data"
KNOWN_BACKENDS = ("local", "ldap")

# Keys each section accepts; anything else is refused so a typo is not silently ignored.
_KNOWN_KEYS: dict[str, frozenset[str]] = {
    "server": frozenset(
        {
            "data_dir",
            "listen",
            "tls_cert",
            "tls_key",
            "request_timeout",
            "request_deadline",
            "session_lifetime_days",
            "trusted_proxies",
            "proxy_protocol",
            "session_max_days",
            "drain_seconds",
        }
    ),
    "database": frozenset({"url"}),
    "storage": frozenset({"path", "warn_free_mb", "volumes"}),
    "auth": frozenset({"backends", "password_sign_in"}),
    "limits": frozenset(
        {
            "login_failures_per_user",
            "login_failures_per_address",
            "login_failure_window_minutes",
            "connections_per_address",
            "unauthenticated_bytes_per_address",
            "per_user_kbps",
        }
    ),
    "log": frozenset({"json_file"}),
    "admin": frozenset({"listen", "users", "groups"}),
    "lifecycle": frozenset({"deadline_check_seconds", "min_retention_days"}),
    "branch": frozenset({
        "central", "central_fingerprint", "central_ca", "commit_wait_seconds", "credential_file",
        "prefetch_kbps", "cache_max_bytes",
    }),
}

_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the daemon and the admin command need, with absolute paths."""

    data_dir: str
    listen: str = DEFAULT_LISTEN
    tls_cert: str | None = None  # None: DATA/tls/cert.pem, created on first start
    tls_key: str | None = None
    request_timeout: float = 120.0
    request_deadline: float = 60.0  # whole unauthenticated request, first byte to last
    session_lifetime_days: float = 30.0
    session_max_days: float = 90.0  # absolute: no sliding past this age
    database_url: str | None = None  # None: SQLite in the data folder
    storage_path: str | None = None  # None: DATA/chunks
    warn_free_mb: int = 1024  # /healthz warns when a storage folder has less free
    # [storage] volumes: more named pack folders beside the default one (storage/volumes.py)
    volumes: tuple[tuple[str, str], ...] = ()
    auth_backends: tuple[str, ...] = ("local",)
    ldap: LdapConfig | None = None  # when [ldap] is configured
    kerberos: KerberosConfig | None = None  # [kerberos]: single sign-on (issue 19)
    password_sign_in: bool = True  # [auth] password_sign_in = no leaves only single sign-on
    login_failures_per_user: int = 5
    login_failures_per_address: int = 20
    connections_per_address: int = 1024
    unauthenticated_bytes_per_address: int = 8 * 1024 * 1024
    # each signed-in user's upload + download rate over all their connections, KiB/s (None:
    # no limit; web/usershaping.py)
    per_user_kbps: int | None = None
    # peers whose X-Forwarded-For names the client (smartsyncd.web.clientaddr)
    trusted_proxies: tuple[Network, ...] = ()
    # every connection starts with a PROXY protocol header (HAProxy's send-proxy-v2)
    proxy_protocol: bool = False
    # Failed sign-ins are counted over this window; keep per_user failures in it below the
    # domain's lockout threshold within its observation window (AD's default is 30 minutes).
    login_failure_window_minutes: float = 30.0
    json_log_file: str | None = None
    # the admin endpoint (/metrics): a Twisted endpoint string; None: no admin listener
    admin_listen: str | None = None
    # who may use the status page there: local account names, directory groups (issue 17)
    admin_users: tuple[str, ...] = ()
    admin_groups: tuple[str, ...] = ()
    # on SIGTERM: how long in-flight requests (an upload mid-stream) may take to finish
    drain_seconds: float = 30.0
    # issue 20: how often (at most) the deadline timer rereads the stored deadlines
    deadline_check_seconds: float = 60.0
    # the firm-wide minimum retention period in days (None: only per-engagement minimums)
    min_retention_days: int | None = None
    # issue 18, a branch office (docs/branch-offices.md): the central server's URL, how to trust
    # it (a pinned SHA-256 fingerprint or a CA file; neither: the system's roots), and how long
    # a forwarded commit waits for the standby to replay it
    branch_central: str | None = None
    branch_central_fingerprint: str | None = None
    branch_central_ca: str | None = None
    branch_commit_wait_seconds: float = 30.0
    # the branch's credential (prefetch of carried engagements), the prefetch's pace (None: one
    # request at a time, unpaced) and the chunk cache's size limit (None: never trimmed)
    branch_credential_file: str | None = None
    branch_prefetch_kbps: int | None = None
    branch_cache_max_bytes: int | None = None
    config_file: str | None = None
    ldap_section: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tls_dir(self) -> str:
        return os.path.join(self.data_dir, "tls")

    @property
    def cert_path(self) -> str:
        return self.tls_cert or os.path.join(self.tls_dir, "cert.pem")

    @property
    def key_path(self) -> str:
        return self.tls_key or os.path.join(self.tls_dir, "key.pem")

    @property
    def volume_folders(self) -> dict[str, str]:
        """Every storage volume by name: ``default`` (``[storage] path``) and ``[storage] volumes``."""
        return {"default": self.storage_path or os.path.join(self.data_dir, "chunks"), **dict(self.volumes)}

    @property
    def self_signed(self) -> bool:
        """True when the certificate is the data folder's own (created when missing)."""
        return self.tls_cert is None


def _convert(label: str, raw: str, convert: Callable[[str], _T]) -> _T:
    try:
        return convert(raw)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{label}: bad value {raw!r}: {e}") from None


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _yes_no(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def _days(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 100000:
        raise ValueError("must be a whole number of days from 0 to 100000")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _kbps(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 10_000_000:
        raise ValueError("must be a whole number of KiB/s from 1 to 10000000")
    return value


def _backends(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    if not names:
        raise ValueError("name at least one backend")
    for n in names:
        if n not in KNOWN_BACKENDS:
            raise ValueError(f"unknown backend {n!r} (known: {', '.join(KNOWN_BACKENDS)})")
    if len(set(names)) != len(names):
        raise ValueError("a backend is listed twice")
    return names


def check_listen(listen: str) -> str:
    """Refuse endpoint strings that are not TLS; returns the string stripped."""
    listen = listen.strip()
    kind = listen.split(":", 1)[0].lower()
    if kind != "ssl":
        raise ValueError(
            f"{listen!r} is not a TLS endpoint: smartsyncd listens with TLS only "
            "(use e.g. ssl:8443 or ssl:8443:interface=127.0.0.1)"
        )
    if ":" not in listen or not listen.split(":", 2)[1]:
        raise ValueError(f"{listen!r} names no port (e.g. ssl:8443)")
    if "sslmethod=" in listen.lower():
        raise ValueError("sslmethod is not configurable: the server always requires TLS 1.2+")
    return listen


def check_admin_listen(listen: str) -> str:
    """An admin endpoint string: ``tcp:`` (a local scraper) or ``ssl:``, with a port."""
    listen = listen.strip()
    kind = listen.split(":", 1)[0].lower()
    if kind not in ("tcp", "ssl"):
        raise ValueError(
            f"{listen!r}: the admin endpoint is tcp: or ssl: "
            "(e.g. tcp:9100:interface=127.0.0.1 or ssl:9443)"
        )
    if kind == "ssl":
        return check_listen(listen)
    if ":" not in listen or not listen.split(":", 2)[1]:
        raise ValueError(f"{listen!r} names no port (e.g. tcp:9100:interface=127.0.0.1)")
    return listen


def _names(raw: str) -> tuple[str, ...]:
    """Local account names separated by commas or white space."""
    return tuple(n for n in raw.replace(",", " ").split() if n)


VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def _volumes(raw: str, base: str) -> tuple[tuple[str, str], ...]:
    """``name:/path`` pairs separated by white space or commas; ``default`` is ``[storage] path``."""
    volumes: dict[str, str] = {}
    for item in raw.replace(",", " ").split():
        name, sep, path = item.partition(":")
        if not sep or not path:
            raise ValueError(f"{item!r} is not name:/path")
        if not VOLUME_NAME.fullmatch(name):
            raise ValueError(f"volume name {name!r}: use 1-32 of a-z 0-9 _ -, starting with a letter or digit")
        if name == "default":
            raise ValueError("'default' is the [storage] path folder; name the others differently")
        if name in volumes:
            raise ValueError(f"volume {name!r} is listed twice")
        volumes[name] = _resolve(path, base)
    if not volumes:
        raise ValueError("name at least one volume (name:/path)")
    return tuple(volumes.items())


def _groups(raw: str) -> tuple[str, ...]:
    """Directory groups (a SID, name or DN: DNs hold commas), one per line or ``;``-separated."""
    names = tuple(g.strip() for line in raw.splitlines() for g in line.split(";") if g.strip())
    if not names:
        raise ValueError("name at least one group")
    return names


def _resolve(path: str, base: str) -> str:
    return os.path.abspath(os.path.join(base, os.path.expanduser(path)))


def _read_ini(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror or e}") from None
    except configparser.Error as e:
        raise UsageError(f"config file {path}: {e}") from None
    for section in parser.sections():
        if section in ("ldap", "kerberos"):
            continue  # keys checked by LdapConfig / KerberosConfig.from_section
        known = _KNOWN_KEYS.get(section)
        if known is None:
            raise UsageError(f"config file {path}: unknown section [{section}]")
        for key in parser[section]:
            if key not in known:
                raise UsageError(f"config file {path}: unknown key [{section}] {key}")
    return parser


DEFAULT_CONFIG_FILE = "/etc/smartsyncd/smartsync.ini"


def default_config_file(config_file: str | None, data_dir: str | None) -> str | None:
    """``config_file``, else the system-wide file when it exists and no data folder was named.

    The daemon and ``smartsync-admin`` both use this, so an installed server needs no
    ``--config`` on every call (``SMARTSYNC_CONFIG`` names another default file).
    """
    if config_file is not None or data_dir is not None:
        return config_file
    default = os.environ.get("SMARTSYNC_CONFIG", DEFAULT_CONFIG_FILE)
    return default if os.path.isfile(default) else None


def load_config(
    config_file: str | None = None,
    *,
    data_dir: str | None = None,
    listen: str | None = None,
    cwd: str | None = None,
) -> ServerConfig:
    """Read ``config_file`` (optional), apply the command-line overrides, check every value."""
    cwd = os.path.abspath(cwd or os.getcwd())
    values: dict[str, Any] = {}
    ldap_section: dict[str, str] = {}
    config_path: str | None = None

    if config_file is not None:
        config_path = _resolve(config_file, cwd)
        parser = _read_ini(config_path)
        base = os.path.dirname(config_path)

        def get(section: str, key: str) -> str | None:
            if parser.has_option(section, key):
                raw = parser.get(section, key).strip()
                return raw or None
            return None

        for section, key, field, convert in _OPTIONS:
            if (v := get(section, key)) is not None:
                if convert is _PATH:
                    values[field] = _resolve(v, base)
                else:
                    values[field] = _convert(f"[{section}] {key}", v, convert)
        if (raw_volumes := get("storage", "volumes")) is not None:
            values["volumes"] = _convert("[storage] volumes", raw_volumes, lambda v: _volumes(v, base))
        if parser.has_section("ldap"):
            ldap_section = dict(parser["ldap"])
            values["ldap"] = _ldap_config(ldap_section, base)
        if parser.has_section("kerberos"):
            values["kerberos"] = _kerberos_config(parser["kerberos"], base, values.get("ldap"))

    if data_dir is not None:
        values["data_dir"] = _resolve(data_dir, cwd)
    if listen is not None:
        values["listen"] = _convert("--listen", listen, check_listen)
    values.setdefault("data_dir", _resolve(DEFAULT_DATA_DIR, cwd))

    if ("tls_cert" in values) != ("tls_key" in values):
        raise UsageError("[server] tls_cert and tls_key: set both (or neither, for self-signed)")
    if "ldap" in values.get("auth_backends", ()) and values.get("ldap") is None:
        raise UsageError("[auth] backends: 'ldap' is listed but there is no [ldap] section")
    if values.get("kerberos") is not None and "ldap" not in values.get("auth_backends", ()):
        raise UsageError("[kerberos] needs 'ldap' in [auth] backends (it re-reads the groups)")
    if values.get("admin_groups") and "ldap" not in values.get("auth_backends", ()):
        raise UsageError("[admin] groups needs 'ldap' in [auth] backends (groups are the directory's)")
    if not values.get("password_sign_in", True) and values.get("kerberos") is None:
        raise UsageError("[auth] password_sign_in = no needs [kerberos]: nobody could sign in")
    _check_branch(values)

    return ServerConfig(config_file=config_path, ldap_section=ldap_section, **values)


def _check_branch(values: Mapping[str, Any]) -> None:
    """A branch needs a PostgreSQL standby and at most one way of trusting central."""
    if values.get("branch_central") is None:
        if any(k.startswith("branch_") for k in values):
            raise UsageError("[branch]: set central = https://... (the central server's URL)")
        return
    if not str(values.get("database_url") or "").startswith(("postgresql://", "postgres://")):
        raise UsageError(
            "[branch] needs [database] url = postgresql://... naming a hot standby of the"
            " central database (docs/branch-offices.md)"
        )
    if values.get("branch_central_fingerprint") and values.get("branch_central_ca"):
        raise UsageError("[branch]: set central_fingerprint or central_ca, not both")


def _https_url(raw: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(raw)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError("expected https://host[:port] (the central server)")
    return raw.rstrip("/")


def _fingerprint(raw: str) -> str:
    digits = raw.replace(":", "").strip()
    if len(digits) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError("expected a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return raw


def _kerberos_config(
    section: Mapping[str, str], base: str, ldap: LdapConfig | None
) -> KerberosConfig:
    from smartsyncd.auth.kerberosconfig import KerberosConfig

    if ldap is None or ldap.bind_dn is None:
        raise UsageError(
            "[kerberos] needs [ldap] with bind_dn: principals are mapped to AD accounts and"
            " their groups with the service account"
        )
    try:
        return KerberosConfig.from_section(section, base, ldap.upn_suffix)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _database_url(raw: str) -> str:
    if raw.startswith("sqlite:"):
        return raw
    if raw.startswith(("postgresql://", "postgres://")):
        return raw
    raise ValueError("expected sqlite:PATH or postgresql://...")


def _ldap_config(section: Mapping[str, str], base: str) -> LdapConfig:
    try:
        from smartsyncd.auth.ldap import LdapConfig
    except ImportError as e:  # the directory backend is not installed in this build
        raise UsageError(f"[ldap]: directory sign-in is not available: {e}") from None
    try:
        return LdapConfig.from_section(section, base)
    except (ValueError, TypeError) as e:
        message = str(e)
        prefix = "" if message.startswith("[ldap]") else "[ldap] "
        raise UsageError(f"{prefix}{message}") from None


# [section] key -> ServerConfig field, converted by the function given (``_PATH``: a path
# resolved against the config file's folder). [ldap] and [kerberos] are read as sections.
def _PATH(text: str) -> str:  # noqa: N802 - a marker in the table, never called
    return text


def _parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    from smartsyncd.web.clientaddr import parse_trusted_proxies

    return parse_trusted_proxies(text)


_OPTIONS: tuple[tuple[str, str, str, Callable[[str], object]], ...] = (
    ("server", "data_dir", "data_dir", _PATH),
    ("server", "listen", "listen", check_listen),
    ("server", "tls_cert", "tls_cert", _PATH),
    ("server", "tls_key", "tls_key", _PATH),
    ("server", "request_timeout", "request_timeout", _positive_float),
    ("server", "request_deadline", "request_deadline", _positive_float),
    ("server", "session_lifetime_days", "session_lifetime_days", _positive_float),
    ("server", "session_max_days", "session_max_days", _positive_float),
    ("server", "drain_seconds", "drain_seconds", _positive_float),
    ("server", "proxy_protocol", "proxy_protocol", _yes_no),
    ("server", "trusted_proxies", "trusted_proxies", _parse_trusted_proxies),
    ("database", "url", "database_url", _database_url),
    ("storage", "path", "storage_path", _PATH),
    ("storage", "warn_free_mb", "warn_free_mb", _positive_int),
    ("auth", "backends", "auth_backends", _backends),
    ("auth", "password_sign_in", "password_sign_in", _yes_no),
    ("limits", "login_failures_per_user", "login_failures_per_user", _positive_int),
    ("limits", "login_failures_per_address", "login_failures_per_address", _positive_int),
    ("limits", "connections_per_address", "connections_per_address", _positive_int),
    ("limits", "unauthenticated_bytes_per_address", "unauthenticated_bytes_per_address",
     _positive_int),
    ("limits", "per_user_kbps", "per_user_kbps", _kbps),
    ("limits", "login_failure_window_minutes", "login_failure_window_minutes", _positive_float),
    ("lifecycle", "deadline_check_seconds", "deadline_check_seconds", _positive_float),
    ("lifecycle", "min_retention_days", "min_retention_days", _days),
    ("log", "json_file", "json_log_file", _PATH),
    ("admin", "listen", "admin_listen", check_admin_listen),
    ("admin", "users", "admin_users", _names),
    ("admin", "groups", "admin_groups", _groups),
    ("branch", "central", "branch_central", _https_url),
    ("branch", "central_fingerprint", "branch_central_fingerprint", _fingerprint),
    ("branch", "central_ca", "branch_central_ca", _PATH),
    ("branch", "commit_wait_seconds", "branch_commit_wait_seconds", _positive_float),
    ("branch", "credential_file", "branch_credential_file", _PATH),
    ("branch", "prefetch_kbps", "branch_prefetch_kbps", _kbps),
    ("branch", "cache_max_bytes", "branch_cache_max_bytes", _positive_int),
)
