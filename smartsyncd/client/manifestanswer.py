"""A manifest answer of the server (``GET``/``POST .../manifests``) checked into a ``Manifest``:
whole or as a delta against a base the client named, and always against its content id. Also
a clone's snapshot with chunk lists (``snapshot_files``), whose files may leave their content
id out: the client derives it from the chunk list (``?lean=1``, issue 15: 32 bytes of hash a
file that no compression removes)."""

from __future__ import annotations

from smartsyncd.client.errors import ProtocolError
from smartsyncd.client.wire import JSONObject, field, obj, parse_file_state
from smartsyncd.core.errors import SyncError
from smartsyncd.core.manifest import apply_delta, chunks_from_json, content_id
from smartsyncd.core.model import FileState, Manifest


def manifest_item(content: str, base: Manifest | None) -> dict[str, str]:
    return {"content": content} if base is None else {"content": content, "base": base.content}


def parse_manifest(data: JSONObject, content: str, base: Manifest | None) -> Manifest:
    """One manifest answer (whole, or a delta against ``base``), checked against ``content``."""
    size = field(data, "size", int, "manifest")
    try:
        if "delta" in data:
            delta = obj(data["delta"], "manifest delta")
            if base is None or delta.get("base") != base.content:
                raise ProtocolError("manifest delta names a base this client did not ask for")
            chunks = apply_delta(base.chunks, delta.get("ops"))
        else:
            chunks = chunks_from_json(data.get("chunks"))
    except SyncError as exc:
        raise ProtocolError(f"server sent a malformed manifest: {exc.message}") from exc
    if content_id(chunks) != content or sum(c.size for c in chunks) != size:
        raise ProtocolError(f"server sent a manifest that does not match content {content}")
    return Manifest(content=content, size=size, chunks=chunks)


def snapshot_files(
    items: list[object], chunks: bool
) -> tuple[list[FileState], dict[str, Manifest]]:
    """The snapshot's files, and (``chunks``: the client asked) the manifests it carried, by
    content id. A file with a chunk list and no ``content`` gets the list's content id."""
    derived: list[object] = []
    for item in items:
        data = obj(item, "snapshot file")
        if chunks and "content" not in data and "chunks" in data:
            try:
                data = {**data, "content": content_id(chunks_from_json(data["chunks"]))}
            except SyncError as exc:
                raise ProtocolError(f"server sent a malformed manifest: {exc.message}") from exc
        derived.append(data)
    files = [parse_file_state(item) for item in derived]
    manifests = {
        f.content: parse_manifest(obj(item, "snapshot file"), f.content, None)
        for f, item in zip(files, derived, strict=True)
        if chunks and f.content is not None and "chunks" in obj(item, "snapshot file")
    }
    return files, manifests
