"""docs/format.md describes the bytes the code writes: its header table is read here and held
against codec/format/bitstream.py's layout, so the two cannot drift apart unseen."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from codec.format import bitstream
from codec import registry

SPEC = (Path(__file__).resolve().parent.parent / "docs" / "format.md").read_text(encoding="utf-8")


def _header_rows() -> list[tuple[str, str, str, str]]:
    """(offset, size, field, valid values) of each row of the spec's first table."""
    table = SPEC.split("| offset | size | field | valid values |", 1)[1].split("\n\n", 1)[0]
    rows = [line.strip("|").split("|", 3) for line in table.strip().splitlines()[1:]]
    return [tuple(cell.strip() for cell in row) for row in rows]


def test_the_fixed_header_fields_sit_where_the_spec_says():
    fields = _header_rows()
    fixed = bitstream._FIXED
    sizes = [struct.calcsize(">" + code) for code in re.findall(r"\d*[a-zA-Z]", fixed.format.lstrip(">"))]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    assert [(int(o), int(s)) for o, s, _, _ in fields[: len(sizes)]] == list(zip(offsets, sizes))
    names = [f for _, _, f, _ in fields[: len(sizes)]]
    assert names == ["magic", "format version", "model id", "weights id", "quality", "image mode", "flags",
                     "width", "height", "stream count n"]
    length_row = fields[len(sizes)]
    assert length_row[0] == str(fixed.size) and length_row[2] == "stream lengths"


def test_the_spec_names_every_valid_value_the_code_accepts():
    rows = {f: valid for _, _, f, valid in _header_rows()}
    assert f"`{bitstream.VERSION}`" in rows["format version"]
    assert "89 41 45 43" in rows["magic"] and bitstream.MAGIC == bytes.fromhex("89414543")
    for entry in registry.MODELS.values():  # every model id, with its name
        assert f"`{entry.model_id}` = `{entry.name}`" in rows["model id"]
    for mode_id, mode in bitstream.MODES.items():
        assert f"`{mode_id}` = {mode}" in rows["image mode"]
    assert "bit 0" in rows["flags"] and "bit 1" in rows["flags"]
    assert (bitstream.FLAG_METADATA, bitstream.FLAG_CENTRED) == (1, 2)  # bit 0, bit 1
    assert str(bitstream.MAX_SIDE) in rows["width"] and f"{bitstream.MAX_PIXELS:,}" in rows["height"]
