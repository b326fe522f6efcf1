"""The session token in the operating system's keychain (opt-in, issue 16), through ``keyring``.

Windows Credential Manager, the macOS Keychain or the Secret Service on Linux (GNOME Keyring,
KWallet) hold the token; config.json then records only the service name (``keychain``), and the
entry's key is ``USER@SERVER-URL``. A keychain that is locked, refuses, or is absent raises
:class:`KeychainError` (exit 3): the token is never written to disk instead, and keyring's
file-based fallbacks (``keyrings.alt``) are refused as "no keychain". Calls block briefly (a
D-Bus or OS call); the CLI makes them between network calls, as it does for config.json.
"""

from __future__ import annotations

from typing import Any

from smartsyncd.client.errors import AuthError

KEYCHAIN_SERVICE = "smartsync"


class KeychainError(AuthError):
    """The OS keychain could not store, read or delete the session token (locked, absent or
    refused): nothing was written to disk in its place."""


def keychain_key(url: str, user: str) -> str:
    """The name of the token's entry in the keychain: one per server and user."""
    return f"{user}@{url}"


def _backend(service: str) -> Any:
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        raise KeychainError(
            "the OS keychain is not available: the 'keyring' package is not installed"
        ) from None
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a broken backend configuration
        raise _failed("reach", exc) from None
    if isinstance(backend, fail.Keyring) or type(backend).__module__.startswith("keyrings.alt"):
        raise KeychainError(
            f"no OS keychain was found for {service!r} (Windows Credential Manager, macOS "
            f"Keychain or a Secret Service such as GNOME Keyring); the token was not saved. "
            f"Sign in without --keychain to keep it in the settings file instead"
        )
    return backend


def _failed(action: str, exc: Exception) -> KeychainError:
    # the message names the backend's reason; it never holds the token
    reason = str(exc) or type(exc).__name__
    return KeychainError(
        f"the OS keychain could not {action} the session token ({type(exc).__name__}: {reason}); "
        f"unlock the keychain and try again. Nothing was written to disk in its place"
    )


def store_token(url: str, user: str, token: str, service: str = KEYCHAIN_SERVICE) -> None:
    """Put ``token`` in the keychain (replacing an older one for this server and user)."""
    backend = _backend(service)
    try:
        backend.set_password(service, keychain_key(url, user), token)
    except Exception as exc:  # each OS backend raises its own kinds
        raise _failed("store", exc) from None


def load_token(url: str, user: str, service: str = KEYCHAIN_SERVICE) -> str | None:
    """The token kept for this server and user, or None when there is none."""
    backend = _backend(service)
    try:
        token = backend.get_password(service, keychain_key(url, user))
    except Exception as exc:  # each OS backend raises its own kinds
        raise _failed("read", exc) from None
    return token if isinstance(token, str) else None


def delete_token(url: str, user: str, service: str = KEYCHAIN_SERVICE) -> None:
    """Remove the token for this server and user (nothing to do when there is none)."""
    backend = _backend(service)
    try:
        from keyring.errors import PasswordDeleteError

        try:
            backend.delete_password(service, keychain_key(url, user))
        except PasswordDeleteError:
            if backend.get_password(service, keychain_key(url, user)) is not None:
                raise
    except Exception as exc:  # each OS backend raises its own kinds
        raise _failed("delete", exc) from None
