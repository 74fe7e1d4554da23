"""Help pages of the command lines (``aecodec``, ``python -m codec.train``, ``python -m
codec.bench``): argparse's layout, without line breaks inside hyphenated names (``aecodec-sc``,
``weights/aecodec-cc.safetensors``), which argparse's wrapping splits at the hyphen."""

from __future__ import annotations

import argparse
import textwrap


class Wrap(argparse.HelpFormatter):
    """argparse's layout; a line breaks only between words."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class RawDescription(argparse.RawDescriptionHelpFormatter, Wrap):
    """A page whose description and epilog are shown as written; its options as :class:`Wrap`."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser laid out by :class:`Wrap` unless told otherwise; argparse makes a
    parser's subcommands of its class, so theirs are too."""

    def __init__(self, *args, formatter_class: type = Wrap, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
