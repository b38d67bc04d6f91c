"""What a payload must be to be stored on any MongoDB and read back as the same JSON.

JSON's rules (objects with string keys, arrays, strings, finite numbers, true/false/null) and
MongoDB's (documents nested at most 100 levels, no NUL in a field name, 16 MB a document),
checked before anything is written. nx-27017 accepts deeper documents than real MongoDB does
(300 levels went through), so a submission that works on the default must be held to the real
server's limit here. The walk is iterative and stops at the limit: a payload nested 10,000
levels deep is refused without a RecursionError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Real MongoDB refuses a stored document nested deeper than 100 levels (the document itself is
# level 1). A context document holds the payload at level 2.
MAX_DEPTH = 100
PAYLOAD_DEPTH = 2
INT64 = (-(2**63), 2**63 - 1)


class NotStorable(ValueError):
    """Raised when a value breaks JSON's or MongoDB's rules; `path` is where (e.g. `payload.a[3]`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _describe(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if hasattr(value, "isoformat"):
        return f"a {type(value).__name__} (store it as ISO 8601 text)"
    return f"a {type(value).__name__}"


def check_json_value(value: Any, path: str = "payload", depth: int = PAYLOAD_DEPTH) -> None:
    """Raise NotStorable at the first value that is not plain JSON MongoDB can store."""
    stack: list[tuple[Any, str, int]] = [(value, path, depth)]
    while stack:
        item, where, level = stack.pop()
        if item is None or isinstance(item, str | bool):
            continue
        if isinstance(item, int):
            if not INT64[0] <= item <= INT64[1]:
                raise NotStorable(where, "an integer beyond 64 bits cannot be stored")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise NotStorable(where, f"{item!r} is not JSON (NaN and Infinity have no JSON form)")
            continue
        is_mapping = isinstance(item, Mapping)
        if not (is_mapping or isinstance(item, list | tuple)):
            raise NotStorable(where, f"{_describe(item)} is not a JSON value")
        if level > MAX_DEPTH:
            raise NotStorable(where, f"nests deeper than MongoDB's limit of {MAX_DEPTH} levels")
        if is_mapping:
            for key, child in item.items():
                if not isinstance(key, str):
                    raise NotStorable(where, f"the key {key!r} is not a string")
                if "\x00" in key:
                    raise NotStorable(where, f"the key {key!r} holds a NUL character, which MongoDB refuses")
                stack.append((child, f"{where}.{key}", level + 1))
        else:
            stack.extend((child, f"{where}[{i}]", level + 1) for i, child in enumerate(item))
