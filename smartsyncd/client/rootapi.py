"""The calls that read an engagement's signed content root (issue 20, docs/protocol.md
"Content root"), checked by ``client/verify.py``; ``ServerAPI`` (client/http.py) has them.
Also the engagement URL paths every call builds."""

from __future__ import annotations

from urllib.parse import quote

from smartsyncd.client.errors import ProtocolError
from smartsyncd.client.transport import Transport
from smartsyncd.client.wire import JSONObject, field, obj


def eng_path(name: str, *rest: str) -> str:
    """``/v1/engagements/NAME/REST...``, each part quoted."""
    return "/v1/engagements/" + "/".join(quote(part, safe="") for part in (name, *rest))


class RootCalls(Transport):
    """The content-root reads, typed."""

    async def content_root(self, eng: str, seq: int | None = None) -> JSONObject:
        """The signed root at ``seq`` (default: the head); checked by ``client/verify.py``."""
        params = {} if seq is None else {"seq": str(seq)}
        return obj(await self._json("GET", eng_path(eng, "root"), params=params), "root")

    async def root_files(
        self, eng: str, seq: int, after: str | None, limit: int
    ) -> tuple[list[tuple[str, str]], bool]:
        """A page of the (path, content id) pairs the root at ``seq`` is made of; more?"""
        params = {"seq": str(seq), "limit": str(limit)}
        if after is not None:
            params["after"] = after
        data = obj(await self._json("GET", eng_path(eng, "root", "files"), params=params), "root files")
        pairs: list[tuple[str, str]] = []
        for item in field(data, "files", list, "root files"):
            if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
                raise ProtocolError("root files: each file must be [path, content id]")
            pairs.append((item[0], item[1]))
        return pairs, bool(field(data, "more", bool, "root files"))
