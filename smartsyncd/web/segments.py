"""Path segments: Klein (werkzeug) URL converters that check a segment before any handler runs.

A route names its segments by kind (``/v1/engagements/<engagement:eng>/manifests/<content:
content>``); a segment that can never be valid for its kind is answered ``400 bad_request``
naming the segment (``field``), through the same JSON error mapping as every refusal
(web/errors.py), before the session is looked at: the rules are public, the answer says nothing
about what exists. A valid name of an engagement the caller may not see is still a 404 from the
authorization check (web/access.py).
"""

from __future__ import annotations

import re

from klein import Klein
from werkzeug.routing import BaseConverter

from smartsyncd.core.errors import BadRequest
from smartsyncd.storage.db import ENGAGEMENT_NAME
from smartsyncd.web.parse import hash_field

_COPY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def engagement_name(value: str) -> str:
    """``value`` if it can name an engagement (the store's rule), else ``BadRequest``."""
    if not ENGAGEMENT_NAME.fullmatch(value):
        raise BadRequest(
            "the engagement in the URL must be 1-100 characters of letters, digits, '.', '_' and"
            " '-', starting with a letter or digit",
            field="engagement",
        )
    return value


def copy_id(value: str) -> str:
    if not _COPY_ID.fullmatch(value):
        raise BadRequest("the copy in the URL must be 1-64 characters of letters, digits, '-' and '_'",
                         field="copy")
    return value


class EngagementSegment(BaseConverter):
    def to_python(self, value: str) -> str:
        return engagement_name(value)


class ContentSegment(BaseConverter):
    """A content id or chunk hash: 64 lowercase hex digits."""

    def to_python(self, value: str) -> str:
        return hash_field(value, "content")


class CopySegment(BaseConverter):
    def to_python(self, value: str) -> str:
        return copy_id(value)


def install_converters(app: Klein) -> None:
    """Make ``engagement``, ``content`` and ``copy`` usable in ``app``'s route patterns."""
    app.url_map.converters.update(engagement=EngagementSegment, content=ContentSegment, copy=CopySegment)
