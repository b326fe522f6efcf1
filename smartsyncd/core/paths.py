"""Engagement-relative path rules: NFC normalization, validation, and the case-fold comparison key.

Every path that crosses the wire or enters storage goes through ``normalize_path`` (see
docs/protocol.md, "Path rules"). The rules keep names portable to Windows, macOS and Linux disks,
so a name accepted from one copy can be written on every other copy.
"""

from __future__ import annotations

import re
import unicodedata

from smartsyncd.core.errors import InvalidPath

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096
RESERVED_TOP = ".smartsync"

_FORBIDDEN_CHARS = frozenset(':*?"<>|')
_CONTROL_RE = re.compile("[\x00-\x1f\x7f]")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Windows treats these device names as reserved with any extension ("con.txt", "COM1.tar.gz");
# it also accepts superscript digits for COM/LPT.
_RESERVED_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{d}" for dev in ("COM", "LPT") for d in "123456789\u00b9\u00b2\u00b3"]
)
# Bidirectional controls reorder what a name shows ("invoice\u202Efdp.exe" reads as
# "invoiceexe.pdf"); the other default-ignorable code points (zero-width joiners and spaces,
# variation selectors, Hangul fillers, tags) are invisible, so two names that look the same
# would be different files. Unicode's Default_Ignorable_Code_Point list (DerivedCoreProperties).
_BIDI_RE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_IGNORABLE_RE = re.compile(
    "[\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200d\u2060-\u2065"
    "\u206a-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)
# The shape of a Windows 8.3 short name ("PROGRA~1", "REPORT~12.DOC"): on a volume with short
# names it can name another file of the folder, so it is never a name of its own.
_SHORT_NAME_RE = re.compile(r"^[^.~]{1,7}~[0-9]{1,7}(\.[^.]{1,3})?$")


def _refuse(original: object, message: str) -> InvalidPath:
    shown = original if isinstance(original, str) else repr(original)
    # a lone surrogate cannot be sent back as UTF-8 JSON: show it escaped ("\\ud800")
    shown = shown.encode("utf-8", "backslashreplace").decode("utf-8")
    return InvalidPath(message, path=shown)


def normalize_path(path: str) -> str:
    """Return the NFC form of ``path`` or raise ``InvalidPath`` naming the broken rule."""
    if not isinstance(path, str):
        raise _refuse(path, f"path must be a string, not {type(path).__name__}")
    if path.isascii():  # ASCII is valid UTF-8 and already NFC (most names): skip both steps
        nfc = path
    else:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise _refuse(path, "path is not valid Unicode (lone surrogate)") from None
        nfc = unicodedata.normalize("NFC", path)
    if nfc == "":
        raise _refuse(path, "path is empty")
    if "\x00" in nfc:
        raise _refuse(path, "path contains a NUL character")
    if _CONTROL_RE.search(nfc):
        raise _refuse(path, "path contains a control character")
    if not nfc.isascii():
        if _BIDI_RE.search(nfc):
            raise _refuse(path, "path contains a bidirectional control character")
        if _IGNORABLE_RE.search(nfc):
            raise _refuse(path, "path contains an invisible (default-ignorable) character")
    if "\\" in nfc:
        raise _refuse(path, "path contains a backslash")
    if nfc.startswith("//"):
        raise _refuse(path, "path is a UNC path (starts with '//')")
    if nfc.startswith("/"):
        raise _refuse(path, "path is absolute (starts with '/')")
    if _DRIVE_RE.match(nfc):
        raise _refuse(path, "path starts with a drive letter")
    if len(nfc.encode("utf-8")) > MAX_PATH_BYTES:
        raise _refuse(path, f"path is longer than {MAX_PATH_BYTES} UTF-8 bytes")
    segments = nfc.split("/")
    if segments[0].casefold() == RESERVED_TOP:
        raise _refuse(path, f"top-level '{RESERVED_TOP}' is reserved")
    for segment in segments:
        _check_segment(path, segment)
    return nfc


def _check_segment(original: str, segment: str) -> None:
    if segment == "":
        raise _refuse(original, "path has an empty segment")
    if segment in (".", ".."):
        raise _refuse(original, f"path has a '{segment}' segment")
    if not _FORBIDDEN_CHARS.isdisjoint(segment):
        bad = sorted(set(segment) & _FORBIDDEN_CHARS)
        raise _refuse(original, f"path segment {segment!r} contains forbidden character {bad[0]!r}")
    if segment.endswith(".") or segment.endswith(" "):
        raise _refuse(original, f"path segment {segment!r} ends with a dot or space")
    device = segment.split(".", 1)[0].rstrip(" ").upper()
    if device in _RESERVED_NAMES:
        raise _refuse(original, f"path segment {segment!r} is a Windows-reserved name")
    if "~" in segment and _SHORT_NAME_RE.match(segment) and len(segment.split(".")[0]) <= 8:
        raise _refuse(original, f"path segment {segment!r} has the shape of a Windows short name")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise _refuse(original, f"path segment is longer than {MAX_SEGMENT_BYTES} UTF-8 bytes")


def fold_key(path: str) -> str:
    """The comparison key for case and normalization twins (NFC, casefold, NFC again).

    The final NFC keeps the key canonical where casefolding yields a decomposable sequence.
    """
    if path.isascii():  # NFC leaves ASCII alone and casefold of ASCII is lower()
        return path.lower()
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def parent_of(path: str) -> str:
    """The containing folder of ``path``; ``""`` for a top-level name."""
    head, _, _ = path.rpartition("/")
    return head


def name_of(path: str) -> str:
    """The last segment of ``path``."""
    return path.rpartition("/")[2]


def ancestors(path: str) -> list[str]:
    """Every containing folder, outermost first: ``["a", "a/b"]`` for ``"a/b/c"``."""
    segments = path.split("/")
    return ["/".join(segments[:i]) for i in range(1, len(segments))]
