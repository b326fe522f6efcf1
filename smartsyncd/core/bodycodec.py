"""zstd ``Content-Encoding`` of JSON request and response bodies (docs/protocol.md, "Compressed
JSON bodies") and of chunk uploads sent as one stream (web/upload.py). Pure: no I/O.

Large JSON bodies (a commit of thousands of files, a page of 5000 changes, a list of missing
chunks) are mostly repeated keys and hex hashes; zstd roughly halves the hashes and removes
the rest. The receiver always decompresses with a cap on the output and on the window size,
so a zstd bomb costs nothing (field-lessons.md, lesson 8).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

import zstandard

from smartsyncd.core.errors import BadRequest, TooLarge

ENCODING = "zstd"
# Bodies smaller than this are sent as they are: compressing them saves less than a header.
MIN_COMPRESS = 1024
MAX_WINDOW = 8 * 1024 * 1024
PIECE = 1024 * 1024  # decode_pieces: decompressed bytes per piece
_local = threading.local()


def _compressor(level: int = 3) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def compress(data: bytes, level: int = 3) -> bytes:
    """One zstd frame of ``data`` (records the content size)."""
    return _compressor(level).compress(data)


def compress_pieces(pieces: Iterable[bytes], size: int = -1) -> bytes:
    """One zstd frame of the concatenated ``pieces``, compressed as they come (a large commit's
    body is never whole before compression). ``size``, their total length when known, goes in
    the frame header: the receiver then decompresses into one buffer of that size."""
    compressor = _compressor().compressobj(size=size)
    out = bytearray()
    for piece in pieces:
        out += compressor.compress(piece)
    out += compressor.flush()
    return bytes(out)


def worth_compressing(data: bytes) -> bool:
    return len(data) >= MIN_COMPRESS


def accepts(header_values: Sequence[bytes | str] | None) -> bool:
    """Whether an ``Accept-Encoding`` header allows zstd (``q=0`` refuses it)."""
    for value in header_values or []:
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for item in text.split(","):
            name, _, params = item.strip().partition(";")
            if name.strip().lower() != ENCODING:
                continue
            q = params.replace(" ", "").lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def decode(data: bytes, encoding: str | None, cap: int) -> bytes:
    """The body as sent before ``Content-Encoding`` ``encoding`` (None or ``identity``: as is).

    A decompressed body over ``cap`` bytes is ``TooLarge``; a damaged frame, trailing data or an
    unknown encoding is ``BadRequest``. Nothing is allocated beyond ``cap`` plus one read.
    """
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        if len(data) > cap:
            raise TooLarge(f"body over the limit of {cap} bytes", limit=cap)
        return data
    if name != ENCODING:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use zstd or none",
                         field="content-encoding")
    try:
        # zstandard ignores max_output_size when the frame header states a content size, so a
        # frame declaring more than the cap is refused before anything is allocated.
        declared = zstandard.frame_content_size(data)
        if declared > cap:
            raise TooLarge(f"decompressed body over the limit of {cap} bytes", limit=cap)
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        if declared >= 0:
            out = dctx.decompress(data, max_output_size=cap, allow_extra_data=False)
        else:  # no size in the header: read at most cap + 1 bytes
            with dctx.stream_reader(data, read_across_frames=False) as reader:
                parts = []
                got = 0
                while got <= cap:
                    part = reader.read(cap + 1 - got)
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
                if got > cap:
                    raise TooLarge(f"decompressed body over the limit of {cap} bytes", limit=cap)
                out = b"".join(parts)
            # one whole frame and nothing after it (a second frame would be read as more body)
            if _frame_end(data) != len(data):
                raise BadRequest("body is not a valid zstd frame: data after the frame")
    except zstandard.ZstdError as e:
        raise BadRequest(f"body is not a valid zstd frame: {e}") from None
    if len(out) > cap:
        raise TooLarge(f"decompressed body over the limit of {cap} bytes", limit=cap)
    return out


def decode_pieces(data: bytes, encoding: str | None, cap: int, piece: int = PIECE) -> Iterator[bytes]:
    """``decode``'s result in pieces of at most ``piece`` bytes (one piece when not compressed),
    so a large commit body is never whole once decompressed; the same errors, raised while
    iterating (a piece already yielded may precede them), and nothing held beyond one piece."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        if len(data) > cap:
            raise TooLarge(f"body over the limit of {cap} bytes", limit=cap)
        yield data
        return
    if name != ENCODING:
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}; use zstd or none",
                         field="content-encoding")
    got = 0
    try:
        if zstandard.frame_content_size(data) > cap:
            raise TooLarge(f"decompressed body over the limit of {cap} bytes", limit=cap)
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        # read_to_iter stops at the end of the first frame: what follows is checked below
        for part in dctx.read_to_iter(data, read_size=zstandard.DECOMPRESSION_RECOMMENDED_INPUT_SIZE,
                                      write_size=piece):
            got += len(part)
            if got > cap:
                raise TooLarge(f"decompressed body over the limit of {cap} bytes", limit=cap)
            yield part
        end = _frame_end(data)
    except zstandard.ZstdError as e:
        raise BadRequest(f"body is not a valid zstd frame: {e}") from None
    if end != len(data):
        raise BadRequest("body is not a valid zstd frame: data after the frame")


def _frame_end(data: bytes) -> int:
    """Where the zstd frame at the start of ``data`` ends (RFC 8878 section 3.1.1: the frame
    header, blocks of a 3-byte header each, an optional 4-byte checksum), once the frame has
    decompressed without error: a walk over the block headers, not a second decompression."""
    pos = zstandard.frame_header_size(data)
    while True:
        if pos + 3 > len(data):
            return -1
        header = int.from_bytes(data[pos : pos + 3], "little")
        pos += 3 + (1 if (header >> 1) & 3 == 1 else header >> 3)  # an RLE block holds one byte
        if header & 1:  # the last block
            break
    return pos + 4 if zstandard.get_frame_parameters(data).has_checksum else pos
