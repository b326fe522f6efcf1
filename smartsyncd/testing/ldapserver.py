"""Test fixture: an ldaptor in-memory directory on a loopback port that behaves enough like AD.

- Binds by DN, and also by ``user@realm`` (userPrincipalName) and ``DOMAIN\\user``
  (sAMAccountName), answering AD's ``data 525`` (no such user) / ``data 52e`` (bad password).
- An empty password with a name is an RFC 4513 "unauthenticated bind" and succeeds, as on many
  real servers: that is exactly the bypass a client must prevent.
- Optional LDAPS listener or StartTLS (or a StartTLS that the server refuses), with certificates
  from ``make_test_pki``.
- Counts connections and records bind names (never passwords), so tests can prove that nothing
  was sent.

The in-memory server does not implement AD's in-chain matching rule; ``memberOf`` values are
kept in step by ``Directory.add_member``/``remove_member`` for the memberOf-walking mode.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import struct
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from ldaptor import interfaces
from ldaptor.inmemory import ReadOnlyInMemoryLDAPEntry
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapserver import LDAPServer
from twisted.internet import defer, ssl
from twisted.internet.protocol import ServerFactory
from twisted.python.components import registerAdapter

# ---------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class TestPki:
    """PEM files: a CA, and a server certificate/key it signed."""

    __test__ = False  # not a pytest test class

    ca_file: str
    cert_file: str
    key_file: str
    ca_cert: Any = field(repr=False, compare=False)
    ca_key: Any = field(repr=False, compare=False)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_test_pki(
    directory: str,
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1"),
    ca: TestPki | None = None,
    prefix: str = "",
) -> TestPki:
    """Write a CA (or reuse ``ca``) and a server certificate for ``hostnames`` into ``directory``.

    The key file is written with mode 0600 (Samba refuses a group/world-readable key).
    """
    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    if ca is None:
        ca_key, ca_cert = _make_ca(now)
        ca_file = os.path.join(directory, prefix + "ca.pem")
        with open(ca_file, "wb") as f:
            f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_key, ca_cert, ca_file = ca.ca_key, ca.ca_cert, ca.ca_file
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _make_server_cert(now, hostnames, key, ca_key, ca_cert)
    cert_file = os.path.join(directory, prefix + "server.pem")
    key_file = os.path.join(directory, prefix + "server.key")
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    _write_private_key(key_file, key)
    return TestPki(ca_file, cert_file, key_file, ca_cert, ca_key)


def _make_ca(now: datetime.datetime) -> tuple[Any, x509.Certificate]:
    """A 30-day RSA test CA: its key and self-signed certificate."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("smartsync test CA"))
        .issuer_name(_name("smartsync test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def _make_server_cert(
    now: datetime.datetime, hostnames: tuple[str, ...], key: Any, ca_key: Any, ca_cert: Any
) -> x509.Certificate:
    """A 30-day server certificate for ``hostnames`` (DNS names or IP addresses), CA-signed."""
    alt: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write_private_key(key_file: str, key: Any) -> None:
    """The key as traditional PEM, mode 0600 from creation."""
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    os.chmod(key_file, 0o600)


def _server_tls_options(pki: TestPki) -> Any:
    with open(pki.cert_file, "rb") as c, open(pki.key_file, "rb") as k:
        return ssl.PrivateCertificate.loadPEM(c.read() + k.read()).options()


# ---------------------------------------------------------------------------------------------
# Directory content


def sid_bytes(text: str) -> bytes:
    """``S-1-5-21-...`` -> the binary objectSid AD stores."""
    parts = text.split("-")
    if parts[:1] != ["S"] or len(parts) < 3:
        raise ValueError(f"not a SID: {text!r}")
    revision, authority, subs = int(parts[1]), int(parts[2]), [int(p) for p in parts[3:]]
    return (
        bytes([revision, len(subs)])
        + authority.to_bytes(6, "big")
        + struct.pack(f"<{len(subs)}I", *subs)
    )


def filetime(unix_seconds: float) -> int:
    """Unix time -> Windows FILETIME (100 ns since 1601), as in accountExpires."""
    return int((unix_seconds + 11644473600) * 10_000_000)


class Directory:
    """An in-memory AD-like tree: ``CN=Users,<base>`` holds users and groups."""

    def __init__(
        self,
        base_dn: str = "DC=firm,DC=example",
        realm: str = "firm.example",
        netbios: str = "FIRM",
        domain_sid: str = "S-1-5-21-1000-2000-3000",
    ) -> None:
        self.base_dn = base_dn
        self.realm = realm
        self.netbios = netbios
        self.domain_sid = domain_sid
        self._rid = 1100
        self.root = ReadOnlyInMemoryLDAPEntry(
            base_dn, {"objectClass": ["top", "domain"], "dc": [base_dn.split(",")[0][3:]]}
        )
        self.users = self.root.addChild(
            "CN=Users", {"objectClass": ["top", "container"], "cn": ["Users"]}
        )

    def _next_sid(self) -> str:
        self._rid += 1
        return f"{self.domain_sid}-{self._rid}"

    def entry(self, dn: str) -> ReadOnlyInMemoryLDAPEntry:
        found = self.root.lookup(dn)
        result: list[Any] = []
        found.addBoth(result.append)
        if isinstance(result[0], Exception) or not isinstance(result[0], ReadOnlyInMemoryLDAPEntry):
            raise KeyError(dn)
        return result[0]

    def add_user(
        self,
        account: str,
        password: str,
        *,
        cn: str | None = None,
        upn: str | None = None,
        uac: int = 0x200,
        **extra: Any,
    ) -> str:
        """Add a user; the CN is deliberately not the account name. Returns the DN."""
        cn = cn or f"{account.title()} Person"
        attributes: dict[str, Any] = {
            "objectClass": ["top", "person", "organizationalPerson", "user"],
            "cn": [cn],
            "sAMAccountName": [account],
            "userPrincipalName": [upn or f"{account}@{self.realm}"],
            "userAccountControl": [str(uac)],
            "objectSid": [sid_bytes(self._next_sid())],
            "pwdLastSet": ["133000000000000000"],
            "accountExpires": ["9223372036854775807"],
            "userPassword": [password],
        }
        for key, value in extra.items():
            attributes[key] = value if isinstance(value, list) else [value]
        entry = self.users.addChild(f"CN={cn}", attributes)
        return entry.dn.getText()

    def add_group(
        self,
        name: str,
        *,
        sid: str | None = None,
        guid: bytes | None = None,
        object_class: str = "group",
        members: tuple[str, ...] = (),
    ) -> str:
        """Add a group (objectSid unless ``sid == ""``); members are DNs. Returns the DN."""
        attributes: dict[str, Any] = {
            "objectClass": ["top", object_class],
            "cn": [name],
            "sAMAccountName": [name],
        }
        if sid != "":
            attributes["objectSid"] = [sid_bytes(sid or self._next_sid())]
        if guid is not None:
            attributes["objectGUID"] = [guid]
        dn = self.users.addChild(f"CN={name}", attributes).dn.getText()
        for member in members:
            self.add_member(dn, member)
        return dn

    def add_member(self, group_dn: str, member_dn: str) -> None:
        group, member = self.entry(group_dn), self.entry(member_dn)
        for entry, attribute, value in (
            (group, "member", member_dn),
            (member, "memberOf", group_dn),
        ):
            if attribute in entry:
                entry[attribute].add(value)
            else:
                entry[attribute] = [value]

    def remove_member(self, group_dn: str, member_dn: str) -> None:
        group, member = self.entry(group_dn), self.entry(member_dn)
        group["member"].remove(member_dn)
        member["memberOf"].remove(group_dn)

    def set(self, dn: str, attribute: str, *values: Any) -> None:
        self.entry(dn)[attribute] = list(values)


def firm_directory() -> Directory:
    """The standard test firm.

    Users (password ``pw-<name>``): alice (Audit Team, nested in All Staff), bob (disabled),
    carol (Loop A <-> Loop B cycle), dave (locked), erin (account expired in 2001), frank
    (must change password), svc-smartsync (service account). ``*`` groups: Audit Team, All Staff,
    Loop A, Loop B, Legacy (objectGUID only, no objectSid).
    """
    d = Directory()
    alice = d.add_user("alice", "pw-alice", cn="Alice Auditor")
    d.add_user("bob", "pw-bob", uac=0x202)
    carol = d.add_user("carol", "pw-carol")
    d.add_user("dave", "pw-dave", lockoutTime="132000000000000000")
    d.add_user("erin", "pw-erin", accountExpires=str(filetime(978307200)))
    d.add_user("frank", "pw-frank", pwdLastSet="0")
    d.add_user("svc-smartsync", "svc-secret", cn="SmartSync Service")
    audit = d.add_group("Audit Team", sid=f"{d.domain_sid}-2001", members=(alice,))
    d.add_group("All Staff", sid=f"{d.domain_sid}-2002", members=(audit,))
    loop_a = d.add_group("Loop A", sid=f"{d.domain_sid}-2003", members=(carol,))
    loop_b = d.add_group("Loop B", sid=f"{d.domain_sid}-2004", members=(loop_a,))
    d.add_member(loop_a, loop_b)
    d.add_group("Legacy", sid="", guid=bytes(range(16)), members=(carol,))
    return d


# ---------------------------------------------------------------------------------------------
# Server


class _ADLikeServer(LDAPServer):
    def handle_LDAPBindRequest(self, request: Any, controls: Any, reply: Any) -> Any:
        factory: _DirectoryFactory = self.factory  # type: ignore[assignment]
        raw = request.dn if isinstance(request.dn, bytes) else str(request.dn).encode()
        name = raw.decode("utf-8")
        factory.bind_names.append(name)
        if name and not request.auth:
            # RFC 4513 5.1.2 unauthenticated bind: "succeeds" without checking anything.
            self.boundUser = None
            return pureldap.LDAPBindResponse(resultCode=0)
        if "=" in name or not ("@" in name or "\\" in name):
            return super().handle_LDAPBindRequest(request, controls, reply)
        if "\\" in name:
            domain, _, account = name.partition("\\")
            if domain.lower() != factory.directory.netbios.lower():
                return self._invalid("525")
            match = pureldap.LDAPFilter_equalityMatch(
                attributeDesc=pureldap.LDAPAttributeDescription("sAMAccountName"),
                assertionValue=pureldap.LDAPAssertionValue(account),
            )
        else:
            match = pureldap.LDAPFilter_equalityMatch(
                attributeDesc=pureldap.LDAPAttributeDescription("userPrincipalName"),
                assertionValue=pureldap.LDAPAssertionValue(name),
            )
        found: list[Any] = []
        d = factory.directory.root.search(filterObject=match, callback=found.append)

        def check(_: Any) -> Any:
            if len(found) != 1:
                return self._invalid("525")
            entry = found[0]
            bound = entry.bind(request.auth)

            def ok(_: Any) -> Any:
                self.boundUser = entry
                return pureldap.LDAPBindResponse(resultCode=0, matchedDN=entry.dn.getText())

            def bad(failure: Any) -> Any:
                failure.trap(ldaperrors.LDAPInvalidCredentials)
                return self._invalid("52e")

            return bound.addCallbacks(ok, bad)

        return d.addCallback(check)

    @staticmethod
    def _invalid(code: str) -> Any:
        raise ldaperrors.LDAPInvalidCredentials(
            f"80090308: LdapErr: DSID-0C09041C, comment: AcceptSecurityContext error, data {code}, v4563"
        )

    def extendedRequest_LDAPStartTLSRequest(self, data: Any, reply: Any) -> None:
        factory: _DirectoryFactory = self.factory  # type: ignore[assignment]
        oid = pureldap.LDAPStartTLSRequest.oid
        if factory.starttls_options is None or factory.refuse_starttls:
            reply(
                pureldap.LDAPExtendedResponse(
                    resultCode=ldaperrors.LDAPUnavailable.resultCode,
                    responseName=oid,
                    errorMessage=b"StartTLS not available",
                )
            )
            return None
        reply(pureldap.LDAPExtendedResponse(resultCode=0, responseName=oid))
        self.transport.startTLS(factory.starttls_options)
        return None

    extendedRequest_LDAPStartTLSRequest.oid = pureldap.LDAPStartTLSRequest.oid  # type: ignore[attr-defined]

    def extendedRequest_WhoAmI(self, data: Any, reply: Any) -> Any:
        """RFC 4532 as AD answers it: ``u:NETBIOS\\sAMAccountName`` of the bound user."""
        factory: _DirectoryFactory = self.factory  # type: ignore[assignment]
        if not factory.who_am_i:
            raise ldaperrors.LDAPProtocolError(b"Extended Operation not supported")
        authz = b""
        if self.boundUser is not None:
            account = self.boundUser["sAMAccountName"]
            name = next(iter(account)) if account else self.boundUser.dn.getText()
            authz = f"u:{factory.directory.netbios}\\{name}".encode()
        return pureldap.LDAPExtendedResponse(resultCode=0, response=authz)

    extendedRequest_WhoAmI.oid = b"1.3.6.1.4.1.4203.1.11.3"  # type: ignore[attr-defined]


class _DirectoryFactory(ServerFactory):
    protocol = _ADLikeServer

    def __init__(self, directory: Directory, starttls_options: Any, refuse_starttls: bool) -> None:
        self.directory = directory
        self.root = directory.root
        self.starttls_options = starttls_options
        self.refuse_starttls = refuse_starttls
        self.connections = 0
        self.bind_names: list[str] = []
        self.who_am_i = True

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


_adapter_registered = False


def _register_adapter() -> None:
    global _adapter_registered
    if not _adapter_registered:
        registerAdapter(
            lambda factory: factory.root, _DirectoryFactory, interfaces.IConnectedLDAPEntry
        )
        _adapter_registered = True


@dataclass
class RunningDirectory:
    """A listening in-memory directory. ``url`` is ldaps:// or ldap:// on 127.0.0.1."""

    directory: Directory
    url: str
    port: int
    _factory: _DirectoryFactory
    _listening: Any

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._factory.connections

    @property
    def bind_names(self) -> list[str]:
        """Names of all bind requests received (passwords are not kept)."""
        return self._factory.bind_names

    def set_who_am_i(self, offered: bool) -> None:
        """Offer RFC 4532 "Who am I?" (as AD does) or refuse it (as Samba 4.17 does)."""
        self._factory.who_am_i = offered

    def stop(self) -> defer.Deferred[None]:
        return defer.maybeDeferred(self._listening.stopListening)


def start_directory(
    reactor: Any,
    directory: Directory,
    *,
    pki: TestPki | None = None,
    ldaps: bool = False,
    refuse_starttls: bool = False,
    host: str = "127.0.0.1",
) -> RunningDirectory:
    """Listen on a free loopback port. With ``pki``: StartTLS is offered (unless refused), and
    ``ldaps=True`` makes the listener speak TLS from the first byte instead."""
    _register_adapter()
    options = _server_tls_options(pki) if pki is not None else None
    factory = _DirectoryFactory(directory, None if ldaps else options, refuse_starttls)
    if ldaps:
        if options is None:
            raise ValueError("ldaps needs a pki")
        listening = reactor.listenSSL(0, factory, options, interface=host)
    else:
        listening = reactor.listenTCP(0, factory, interface=host)
    port = listening.getHost().port
    scheme = "ldaps" if ldaps else "ldap"
    return RunningDirectory(directory, f"{scheme}://{host}:{port}", port, factory, listening)


__all__ = [
    "Directory",
    "RunningDirectory",
    "TestPki",
    "filetime",
    "firm_directory",
    "make_test_pki",
    "sid_bytes",
    "start_directory",
]
