"""The type of decoded JSON, shared by the server's request parsing and the client's answers.

``json.loads`` gives a ``JSONValue``; a JSON object decodes to a ``JSONDict``. Code that reads a
field narrows it (``isinstance``) before use, as the accessors in ``web/bodies.py`` and
``client/wire.py`` do. Answers being built are plain ``dict[str, object]`` (``web/shapes.py``'s
``JsonObject``, ``client/wire.py``'s ``JSONObject``): lists are invariant, so a recursive alias
would reject a ``list[dict[...]]`` built in place.
"""

from __future__ import annotations

from typing import TypeAlias

JSONValue: TypeAlias = "None | bool | int | float | str | list[JSONValue] | dict[str, JSONValue]"
JSONDict: TypeAlias = "dict[str, JSONValue]"
