"""aecodec: a learned image codec (see README.md)."""

import os

# Bitwise-reproducible MKL GEMMs whatever the thread count (MKL's "strict CNR" mode). With
# PyTorch's native CPU convolutions (``model.plain_cpu_kernels``) this is what makes decoded
# pixels, and the VAE's latents, independent of the number of threads: without it, some shapes
# (a 16x24 map of 128 channels, say) split the sum across threads. MKL reads the variable at its
# first call, so it is set on import, before any coding; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.20.0"  # as pyproject.toml (tests/test_packaging.py checks they agree)


class AecodecError(Exception):
    """Base of every error aecodec raises on purpose: bad input (FormatError, ImageError),
    a request it cannot carry out (CodecError), bad weights (WeightsError), BenchError."""


class CodecError(AecodecError, ValueError):
    """A request the codec cannot carry out (bad quality, wrong weights, no CUDA, an image too
    large...); a ValueError, as Pillow's and Python's own bad arguments are. (``codec.api.CodecError``.)"""


from codec import pillow_plugin  # noqa: E402,F401 (Image.open / save of .aec files; no torch)
