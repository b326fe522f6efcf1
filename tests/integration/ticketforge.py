"""Test helper: a real Kerberos AP-REQ whose service ticket says it ended an hour ago.

A real MIT client will not build a token from a ticket it considers expired, and the acceptor's
clock-skew check is symmetric, so no setting of clocks makes a real client send an expired
ticket with a fresh authenticator. An old or hostile client can: the test, which holds the
service keytab as the daemon does, takes a token a real client made (SPNEGO, RFC 4178, or
a raw Kerberos GSS token, RFC 4121), decrypts the ticket's ``EncTicketPart`` with the service key (key usage 2), sets its
``endtime`` in the past and encrypts it again with the same key. The authenticator (under the
session key) and the PAC (signed over its own bytes only) are untouched, so the daemon's
GSSAPI accepts everything except the ticket's lifetime.

The new time has the same length as the old one (GeneralizedTime ``YYYYMMDDHHMMSSZ``), so every
DER length stays as it was and the new ciphertext goes in place of the old. The service key is
read from the keytab with the real ``klist -k -K -e``. Samba 4.17 encrypts tickets for an
account without ``msDS-SupportedEncryptionTypes`` with RC4-HMAC (RFC 4757), the only encryption
done here; another type is an error naming it.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4
from cryptography.hazmat.primitives.ciphers import Cipher

RC4_HMAC = 23
_ETYPES = {"arcfour-hmac": RC4_HMAC, "aes128-cts-hmac-sha1-96": 17, "aes256-cts-hmac-sha1-96": 18}
_TICKET_KEY_USAGE = 2  # RFC 4120 7.5.1: AS-REP/TGS-REP ticket, encrypted with the service key
_KRB5_TOKEN_OID = bytes.fromhex("06092a864886f712010202")  # 1.2.840.113554.1.2.2
_AP_REQ_TOKEN_ID = b"\x01\x00"
_SPNEGO_OID = bytes.fromhex("06062b0601050502")  # 1.3.6.1.5.5.2
_KEY_LINE = re.compile(r"^\s*(\d+)\s+(\S+)\s+\((?:DEPRECATED:)?([\w-]+)\)\s+\(0x([0-9a-f]+)\)")


def keytab_keys(keytab: Path, env: dict[str, str]) -> dict[tuple[int, int], bytes]:
    """The keytab's keys by (kvno, etype), as the real ``klist -k -K -e`` prints them."""
    done = subprocess.run(
        ["klist", "-k", "-K", "-e", str(keytab)], capture_output=True, text=True, env=env,
        timeout=30, check=True,
    )
    keys = {}
    for line in done.stdout.splitlines():
        match = _KEY_LINE.match(line)
        if match and match.group(3) in _ETYPES:
            keys[int(match.group(1)), _ETYPES[match.group(3)]] = bytes.fromhex(match.group(4))
    return keys


# -- DER, just enough to find things (every value is read, never re-encoded) ---------------


def _header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the TLV at ``pos``."""
    tag, first = data[pos], data[pos + 1]
    if first < 0x80:
        return tag, pos + 2, pos + 2 + first
    count = first & 0x7F
    length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
    start = pos + 2 + count
    return tag, start, start + length


def _child(data: bytes, start: int, end: int, tag: int) -> tuple[int, int]:
    """Content bounds of the first child TLV with ``tag`` between ``start`` and ``end``."""
    pos = start
    while pos < end:
        child_tag, child_start, child_end = _header(data, pos)
        if child_tag == tag:
            return child_start, child_end
        pos = child_end
    raise ValueError(f"no DER tag {tag:#x} here")


def _path(data: bytes, start: int, end: int, *tags: int) -> tuple[int, int]:
    for tag in tags:
        start, end = _child(data, start, end, tag)
    return start, end


# -- RC4-HMAC (RFC 4757) ------------------------------------------------------------------


def _rc4(key: bytes, data: bytes) -> bytes:
    return Cipher(ARC4(key), mode=None).encryptor().update(data)


def _rc4_hmac_decrypt(key: bytes, usage: int, ciphertext: bytes) -> bytes:
    k1 = hmac.digest(key, usage.to_bytes(4, "little"), "md5")
    checksum, encrypted = ciphertext[:16], ciphertext[16:]
    confounded = _rc4(hmac.digest(k1, checksum, "md5"), encrypted)
    if not hmac.compare_digest(hmac.digest(k1, confounded, "md5"), checksum):
        raise ValueError("the ticket does not decrypt with the keytab's key")
    return confounded[8:]


def _rc4_hmac_encrypt(key: bytes, usage: int, plaintext: bytes) -> bytes:
    k1 = hmac.digest(key, usage.to_bytes(4, "little"), "md5")
    confounded = os.urandom(8) + plaintext
    checksum = hmac.digest(k1, confounded, "md5")
    return checksum + _rc4(hmac.digest(k1, checksum, "md5"), confounded)


# -- the token ----------------------------------------------------------------------------


def _kerberos_time(when: datetime) -> bytes:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode()


def with_ticket_end(token_b64: str, keys: dict[tuple[int, int], bytes], end: datetime) -> str:
    """``token_b64`` (SPNEGO or raw Kerberos) with its ticket's endtime set to ``end``."""
    token = bytearray(base64.b64decode(token_b64))
    tag, start, token_end = _header(token, 0)
    if tag == 0x60 and token[start : start + len(_SPNEGO_OID)] == _SPNEGO_OID:
        # NegTokenInit [0] SEQUENCE { mechTypes [0], reqFlags [1], mechToken [2] OCTET STRING }
        inner = slice(*_path(token, start + len(_SPNEGO_OID), token_end, 0xA0, 0x30, 0xA2, 0x04))
        token[inner] = _rewrite_ap_req(token[inner], keys, end)
    else:
        token = _rewrite_ap_req(token, keys, end)
    return base64.b64encode(bytes(token)).decode()


def _rewrite_ap_req(token: bytearray, keys: dict[tuple[int, int], bytes], end: datetime) -> bytearray:
    token = bytearray(token)
    tag, start, token_end = _header(token, 0)
    prefix = _KRB5_TOKEN_OID + _AP_REQ_TOKEN_ID
    if tag != 0x60 or token[start : start + len(prefix)] != prefix:
        raise ValueError("not a Kerberos AP-REQ token")
    ap_req = start + len(prefix)
    # AP-REQ [APPLICATION 14] SEQUENCE { ticket [3] Ticket [APPLICATION 1] SEQUENCE
    #   { enc-part [3] EncryptedData SEQUENCE { etype [0], kvno [1], cipher [2] } } }
    enc_part = _path(token, ap_req, token_end, 0x6E, 0x30, 0xA3, 0x61, 0x30, 0xA3, 0x30)
    etype_at = _path(token, *enc_part, 0xA0, 0x02)
    kvno_at = _path(token, *enc_part, 0xA1, 0x02)
    cipher_at = _path(token, *enc_part, 0xA2, 0x04)
    etype = int.from_bytes(token[slice(*etype_at)], "big", signed=True)
    kvno = int.from_bytes(token[slice(*kvno_at)], "big", signed=True)
    if etype != RC4_HMAC:
        raise ValueError(f"ticket encryption type {etype}: this helper does RC4-HMAC (23) only")
    key = keys[kvno, etype]
    plain = bytearray(_rc4_hmac_decrypt(key, _TICKET_KEY_USAGE, bytes(token[slice(*cipher_at)])))
    # EncTicketPart [APPLICATION 3] SEQUENCE { ..., endtime [7] KerberosTime, ... }
    end_at = _path(plain, 0, len(plain), 0x63, 0x30, 0xA7, 0x18)
    new_end = _kerberos_time(end)
    assert len(new_end) == end_at[1] - end_at[0]  # same length: no DER length changes
    plain[slice(*end_at)] = new_end
    cipher = _rc4_hmac_encrypt(key, _TICKET_KEY_USAGE, bytes(plain))
    token[slice(*cipher_at)] = cipher
    return token
