"""Which chunks a clone's first small files need, as the server picks them before the clone
has its file list (docs/protocol.md, "First chunks"; issue 15). Pure: no I/O.

A clone asks for its snapshot and, beside it, for these chunks: they travel while the snapshot
does, instead of one round trip (and the client's work on the snapshot) after it. The files are
the ones a new copy writes first (client/pullbatch.py ``file_groups``): the live files by path,
folders left out, as many as ``max_files`` and as long as the small ones (under ``small``
bytes) total at most ``budget``; the chunks are those of the small ones, each once, in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from smartsyncd.core.model import ChunkRef, FileState, Manifest, is_folder


def first_files(files: Sequence[FileState], *, small: int, budget: int,
                max_files: int) -> list[FileState]:
    """The small files of the first group a new copy writes (see the module's docstring)."""
    live = sorted((f for f in files if f.content is not None and not is_folder(f.content)),
                  key=lambda f: f.path)
    out: list[FileState] = []
    size = 0
    for f in live[:max_files]:
        if f.size >= small:
            continue
        if size + f.size > budget:
            break
        size += f.size
        out.append(f)
    return out


def first_chunks(files: Sequence[FileState], manifests: Mapping[str, Manifest],
                 max_chunks: int) -> tuple[list[FileState], list[ChunkRef]]:
    """The files of ``files`` (in order) whose chunk lists are in ``manifests``, each with all
    of its chunks, as long as the chunks (each counted once) number at most ``max_chunks``; and
    those chunks. A file whose list is missing or whose size is not its list's ends the list."""
    served: list[FileState] = []
    refs: list[ChunkRef] = []
    seen: set[str] = set()
    for f in files:
        m = manifests.get(f.content or "")
        if m is None or m.size != f.size:
            break
        new = [c for c in dict.fromkeys(m.chunks) if c.hash not in seen]
        if len(refs) + len(new) > max_chunks:
            break
        seen.update(c.hash for c in new)
        refs.extend(new)
        served.append(f)
    return served, refs
