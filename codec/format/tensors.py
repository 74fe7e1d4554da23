"""safetensors headers (weights files, latent files), read without torch and within limits: the
JSON header's size and nesting are bounded before it is parsed."""

from __future__ import annotations

import json


def read_metadata(data: bytes, max_header: int | None = None, max_depth: int | None = None) -> dict:
    """The ``__metadata__`` of safetensors bytes (weights or latent files), without loading
    tensors. ``max_header`` / ``max_depth`` bound the JSON header's size and nesting before it
    is parsed (files from outside: a deeply nested header would exhaust Python's recursion)."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if max_header is not None and n > max_header:  # first: a caller may pass only the first max_header bytes
        raise ValueError(f"safetensors header of {n} bytes is too large (at most {max_header})")
    if n > len(data) - 8:  # what any other file's first 8 bytes say
        raise ValueError("not a safetensors file, or truncated (its header runs past the end)")
    text = data[8 : 8 + n]
    if max_depth is not None and _json_depth(text) > max_depth:
        raise ValueError(f"safetensors header nests deeper than {max_depth}")
    header = json.loads(text)
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError("safetensors header or metadata is not a JSON object")
    return meta


def _json_depth(text: bytes) -> int:
    """The deepest nesting of [ and { in JSON text, strings skipped (no parsing, no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest
