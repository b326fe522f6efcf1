"""The one place that names Twisted's private modules and attributes, and checks they exist.

smartsyncd leans on a few Twisted internals that have no public equivalent: the Agent's failure
types (``twisted.web._newclient``), the HTTP/1.1-or-2 channel wrapper, the TLS protocol methods
``tlsbatching`` overrides, the ``CertificateOptions`` context an ``ssl:`` endpoint keeps, and
some ``Request``/``HTTPChannel`` state the web layer reads or sets. Each is listed in
``PRIVATES`` with what uses it; code elsewhere imports the names from here rather than from
Twisted, so an upgrade has one file to read.

``require()`` runs when the daemon starts (``service/server.py``): if a newer Twisted lacks any
of them, the start fails with one line naming each missing name and its user, instead of an
``AttributeError`` in the middle of a request. Importing this module never fails: a missing
module or class only turns into an error where it is used, and in ``require()``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import FunctionType
from typing import TYPE_CHECKING, Any

import twisted

if TYPE_CHECKING:
    from OpenSSL.crypto import X509, PKey
    from OpenSSL.SSL import Context


class TwistedInternalsMissing(RuntimeError):
    """This Twisted lacks a private name smartsyncd relies on (the message lists them)."""


@dataclass(frozen=True)
class Private:
    """A private Twisted name: ``owner`` (a module, or ``module:Class``) has ``name``.

    ``set_in``: for an instance attribute, the method of ``owner`` that assigns it (checked
    in that method's code, since the class itself does not have it)."""

    owner: str
    name: str
    used_by: str
    set_in: str | None = None

    def __str__(self) -> str:
        return f"{self.owner.replace(':', '.')}.{self.name}"


_TLS = "twisted.protocols.tls:TLSMemoryBIOProtocol"
_TLS_USER = "runtime/tlsbatching.py (BatchingTLSProtocol)"

# What BatchingTLSProtocol overrides or calls on Twisted's TLS protocol.
TLS_BATCHING: tuple[Private, ...] = (
    *(Private(_TLS, name, _TLS_USER) for name in (
        "_flushReceiveBIO", "_flushSendBIO", "_write", "_bufferedWrite", "_shutdownTLS",
        "_tlsShutdownFinished", "_lostTLSConnection", "_aborted",
    )),
    Private(_TLS, "_tlsConnection", _TLS_USER, set_in="makeConnection"),
)

PRIVATES: tuple[Private, ...] = (
    *TLS_BATCHING,
    Private("twisted.web", "_newclient", "client/http.py (the Agent's failure types)"),
    Private("twisted.web.http", "_GenericHTTPChannelProtocol", "web/bodies.py (Site.protocol)"),
    Private("twisted.web.http:HTTPChannel", "_respondToBadRequestAndDisconnect",
            "web/bodies.py (GuardedChannel overrides it)"),
    Private("twisted.web.http:HTTPChannel", "_send100Continue", "web/upload.py"),
    Private("twisted.web.http:HTTPChannel", "_command", "web/upload.py", set_in="lineReceived"),
    Private("twisted.web.http:HTTPChannel", "_path", "web/upload.py", set_in="lineReceived"),
    Private("twisted.web.http:Request", "_disconnected", "web/upload.py"),
    Private("twisted.web.http:Request", "startedWriting", "web/longpoll.py (pre-built answers)"),
    Private("twisted.web.http:Request", "sentLength", "web/longpoll.py (pre-built answers)"),
    Private("twisted.web.http:Request", "notifications", "web/longpoll.py", set_in="__init__"),
    Private("twisted.internet.endpoints:SSL4ServerEndpoint", "_sslContextFactory",
            "service/tls.py (ciphers, certificate reload)", set_in="__init__"),
    Private("twisted.internet.ssl:CertificateOptions", "_makeContext",
            "service/tlsreload.py (certificate reload)"),
    Private("twisted.internet.ssl:CertificateOptions", "_context",
            "service/tlsreload.py (certificate reload)"),
    Private("twisted.internet.ssl:CertificateOptions", "certificate",
            "service/tlsreload.py (certificate reload)", set_in="__init__"),
    Private("twisted.internet.ssl:CertificateOptions", "privateKey",
            "service/tlsreload.py (certificate reload)", set_in="__init__"),
    Private("twisted.internet._sslverify:ClientTLSOptions", "_createConnection",
            "client/trust.py (session resumption)", set_in="__init__"),
    Private("twisted.internet.abstract:FileDescriptor", "_tempDataLen",
            "runtime/tlsbatching.py (eager send)", set_in="__init__"),
    Private("twisted.internet.tcp:Server", "_writeDisconnecting",
            "runtime/tlsbatching.py (eager send)"),
    Private("twisted.internet.tcp:Port", "_type", "runtime/tlsbatching.py (log name)"),
)


def _resolve(owner: str) -> Any:
    module_name, _, class_name = owner.partition(":")
    found: Any = importlib.import_module(module_name)
    return getattr(found, class_name) if class_name else found


def _present(private: Private) -> bool:
    try:
        owner = _resolve(private.owner)
    except (ImportError, AttributeError):
        return False
    if private.set_in is not None:
        method = getattr(owner, private.set_in, None)
        if isinstance(method, FunctionType):
            method = inspect.unwrap(method)  # e.g. CertificateOptions.__init__ is decorated
        code = getattr(method, "__code__", None) if isinstance(method, FunctionType) else None
        return code is not None and private.name in code.co_names
    if hasattr(owner, private.name):
        return True
    if ":" not in private.owner:  # a private submodule, imported on first use
        try:
            importlib.import_module(f"{private.owner}.{private.name}")
        except ImportError:
            return False
        return True
    return False


def missing(privates: tuple[Private, ...] = PRIVATES) -> list[Private]:
    """The names of ``privates`` this Twisted lacks (none: an empty list)."""
    return [p for p in privates if not _present(p)]


def require() -> None:
    """Raise ``TwistedInternalsMissing`` naming every missing private name and its user."""
    gone = missing()
    if gone:
        listed = "; ".join(f"{p} (used by {p.used_by})" for p in gone)
        raise TwistedInternalsMissing(
            f"Twisted {twisted.__version__} lacks what smartsyncd relies on: {listed}. "
            "Install the Twisted version pinned in pyproject.toml, or update "
            "smartsyncd/runtime/twistedcompat.py"
        )


class _Gone:
    """Stands in for a private module or class this Twisted lacks: any use raises clearly."""

    def __init__(self, what: str) -> None:
        self._what = what

    def _fail(self) -> TwistedInternalsMissing:
        return TwistedInternalsMissing(
            f"Twisted {twisted.__version__} has no {self._what} (smartsyncd/runtime/twistedcompat.py)"
        )

    def __getattr__(self, name: str) -> Any:
        raise self._fail()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self._fail()


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return _Gone(name)


def _attribute(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return _Gone(f"{module}.{name}")


if TYPE_CHECKING:
    from twisted.web import _newclient as newclient
    from twisted.web.http import _GenericHTTPChannelProtocol as GenericHTTPChannelProtocol
else:
    newclient = _module("twisted.web._newclient")
    GenericHTTPChannelProtocol = _attribute("twisted.web.http", "_GenericHTTPChannelProtocol")


def endpoint_tls_context(endpoint: object) -> Context | None:
    """The OpenSSL context a listening ``ssl:`` endpoint uses for every connection, or None
    (not an ``ssl:`` endpoint).

    The endpoint keeps its ``CertificateOptions`` privately; ``getContext`` makes the context
    once and returns that same one for each connection, so what is set on it (ciphers, a
    reloaded certificate) applies to every later handshake."""
    options = getattr(endpoint, "_sslContextFactory", None)
    if options is None:
        return None
    context: Context = options.getContext()
    return context


def client_creator_context(creator: object) -> Context | None:
    """The OpenSSL context behind ``optionsForClientTLS``'s creator, or None if this Twisted
    hides it. (``ClientTLSOptions`` makes each connection with its ``CertificateOptions``'
    bound ``_makeTLSConnection``; the context is that object's ``getContext()``.)"""
    make = getattr(creator, "_createConnection", None)
    options = getattr(make, "__self__", None)
    get_context = getattr(options, "getContext", None)
    if get_context is None:
        return None
    context: Context = get_context()
    return context


def renew_endpoint_context(
    endpoint: object, certificate: X509, key: PKey, prepare: Callable[[Context], None]
) -> Context:
    """Make the listening ``ssl:`` endpoint's new connections use a new context: made by its
    ``CertificateOptions`` as the first one was, with ``certificate`` and ``key``, then given
    to ``prepare`` (e.g. the cipher list). The endpoint is unchanged if any of that raises.

    pyOpenSSL refuses to change a context once a connection was made from it, so a new
    certificate needs a new context; connections already open keep theirs."""
    options = getattr(endpoint, "_sslContextFactory", None)
    if options is None:
        raise ValueError("the listener has no TLS context to reload")
    previous = options.certificate, options.privateKey
    options.certificate, options.privateKey = certificate, key
    try:
        context: Context = options._makeContext()
        prepare(context)
        context.check_privatekey()
    except BaseException:
        options.certificate, options.privateKey = previous
        raise
    options._context = context  # what getContext() hands every new connection
    return context


def transport_has_buffered(transport: Any) -> bool:
    """Whether Twisted's TCP ``transport`` holds bytes not yet sent, or is closing its write
    side (then writes must go through its buffer). A missing attribute counts as buffered."""
    return bool(
        getattr(transport, "_tempDataLen", 1)
        or len(getattr(transport, "dataBuffer", b"?")) != getattr(transport, "offset", 0)
        or not transport.connected
        or transport.disconnecting
        or getattr(transport, "_writeDisconnecting", True)
    )


def name_port_tls(port: Any) -> None:
    """Have a TCP port carrying TLS logged as "TLS", as Twisted's own ``listenSSL`` does."""
    port._type = "TLS"
