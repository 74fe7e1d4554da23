"""``python -m codec.cli``: the ``aecodec`` command."""

from codec.cli import run

run()
