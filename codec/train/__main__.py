"""``python -m codec.train``: training and export (``aecodec train``)."""

from codec.train import main

main()
