"""The type of decoded JSON, shared by the server's request parsing and the client's answers.

``json.loads`` gives one of these; code that reads a field narrows it (``isinstance``) before
use, which is what the typed accessors in ``web/bodies.py`` and ``client/wire.py`` do.
"""

from __future__ import annotations

from typing import TypeAlias

JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"
JSONObject: TypeAlias = "dict[str, JSONValue]"
