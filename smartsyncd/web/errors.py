"""The one error mapping of the HTTP adapter.

``SyncError`` -> its status and JSON body; routing misses -> 404/405 JSON (and an unknown
``/vN/`` -> 400 ``unsupported_protocol``); anything else -> 500 ``internal_error`` with the
traceback logged on the server and never sent.
"""

from __future__ import annotations

import json
import re

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from smartsyncd.core import bodycodec
from smartsyncd.core.errors import SyncError

log = Logger(namespace="smartsyncd.web")

SUPPORTED_PROTOCOLS = [1]
_VERSION_SEGMENT = re.compile(r"^v([0-9]+)$")


def json_bytes(body: object) -> bytes:
    """Compact UTF-8 JSON, the encoding of every response body."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def send_json(request: IRequest, body: object, status: int = 200) -> bytes:
    """Set status and content type; return the encoded body for Klein to write."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    data = json_bytes(body)
    if bodycodec.worth_compressing(data) and bodycodec.accepts(
        request.requestHeaders.getRawHeaders(b"accept-encoding")
    ):
        # a page of changes or a commit answer: mostly repeated keys and hex (protocol.md,
        # "Compressed JSON bodies"); level 3 runs at well over 100 MB/s
        request.setHeader(b"content-encoding", b"zstd")
        request.setHeader(b"vary", b"accept-encoding")
        data = bodycodec.compress(data)
    return whole(request, data)


def whole(request: IRequest, data: bytes) -> bytes:
    """Name the length of an answer written whole: ``Content-Length`` framing, not chunked
    (a chunk's size line and the last empty chunk are bytes on every answer)."""
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


def send_encoded_json(request: IRequest, data: bytes, compressed: bool) -> bytes:
    """``send_json`` for a body already written (and zstd-compressed when ``compressed``)."""
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    if compressed:
        request.setHeader(b"content-encoding", b"zstd")
        request.setHeader(b"vary", b"accept-encoding")
    return whole(request, data)


def _path_text(request: IRequest) -> str:
    path: bytes = request.path
    return path.decode("utf-8", "replace")


def requested_version(request: IRequest) -> int | None:
    """The N of a ``/vN/...`` request path, or None when the first segment is not ``vN``."""
    first = _path_text(request).lstrip("/").split("/", 1)[0]
    match = _VERSION_SEGMENT.match(first)
    return int(match.group(1)) if match and len(first) < 12 else None


def error_response(request: IRequest, failure: Failure) -> bytes:
    """Turn any failure of a handler into a JSON answer (Klein ``handle_errors`` target)."""
    exc = failure.value
    method = request.method.decode("ascii", "replace")
    path = _path_text(request)
    if isinstance(exc, SyncError):
        body = exc.to_json()
        log.info(
            "refused {method} {url}: {code} {status}{file}",
            method=method,
            url=path,
            code=exc.code,
            status=exc.status,
            file=f" path={exc.details['path']!r}" if "path" in exc.details else "",
        )
        if exc.code == "rate_limited" and "retry_after" in exc.details:
            request.setHeader(b"retry-after", str(exc.details["retry_after"]).encode("ascii"))
        return send_json(request, body, exc.status)
    if isinstance(exc, NotFound):
        version = requested_version(request)
        if version is not None and version not in SUPPORTED_PROTOCOLS:
            return send_json(
                request,
                {
                    "error": "unsupported_protocol",
                    "message": f"protocol version {version} is not supported",
                    "supported": SUPPORTED_PROTOCOLS,
                },
                400,
            )
        return send_json(request, {"error": "not_found", "message": f"no such resource: {path}"}, 404)
    if isinstance(exc, MethodNotAllowed):
        allowed = sorted(exc.valid_methods or ())
        if allowed:
            request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return send_json(
            request,
            {"error": "method_not_allowed", "message": f"{method} is not allowed here", "allowed": allowed},
            405,
        )
    if isinstance(exc, HTTPException):
        # Other routing answers (a redirect for a trailing slash, ...): no redirects here.
        code = exc.code if exc.code is not None and 400 <= exc.code < 500 else 404
        error = "not_found" if code == 404 else "bad_request"
        return send_json(request, {"error": error, "message": f"no such resource: {path}"}, code)
    log.failure("internal error answering {method} {url}", failure, method=method, url=path)
    return send_json(
        request, {"error": "internal_error", "message": "internal server error"}, 500
    )
