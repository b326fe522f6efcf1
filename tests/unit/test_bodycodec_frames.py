"""core/bodycodec.py: a compressed body is exactly one zstd frame, whether or not its header
states the content size, in both the one-shot and the piecewise decode."""

from __future__ import annotations

import pytest
import zstandard

from smartsyncd.core import bodycodec
from smartsyncd.core.errors import BadRequest


def _frame(data: bytes, *, sized: bool) -> bytes:
    if sized:
        return zstandard.ZstdCompressor().compress(data)
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    return cobj.compress(data) + cobj.flush()


@pytest.mark.parametrize("sized", [True, False])
def test_one_frame_decodes_the_same_both_ways(sized: bool) -> None:
    body = b'{"changes": []}' * 100
    frame = _frame(body, sized=sized)
    assert bodycodec.decode(frame, "zstd", 1 << 20) == body
    assert b"".join(bodycodec.decode_pieces(frame, "zstd", 1 << 20, piece=64)) == body


@pytest.mark.parametrize("first_sized", [True, False])
@pytest.mark.parametrize("trailer", [b"junk", b"second frame"])
def test_anything_after_the_first_frame_is_refused(first_sized: bool, trailer: bytes) -> None:
    first = _frame(b'{"a": 1}', sized=first_sized)
    data = first + (_frame(trailer, sized=True) if trailer == b"second frame" else trailer)
    with pytest.raises(BadRequest):
        bodycodec.decode(data, "zstd", 1 << 20)
    with pytest.raises(BadRequest):
        list(bodycodec.decode_pieces(data, "zstd", 1 << 20))
