"""``python -m codec.bench``: the benchmark (``aecodec bench``)."""

import sys

from codec.bench import main

sys.exit(main())
