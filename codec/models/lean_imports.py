"""CompressAI's entropy models without the rest of CompressAI: the one place that bends imports.

Why: ``compressai/__init__`` imports every subpackage, and its point-cloud datasets and
transform registry import ``torch_geometric``, which imports ``torch._dynamo``: about 2 s and
hundreds of MB of every ``aecodec`` call go to code a codec never runs (measured in docs/performance.md,
"Speed"). ``scipy.stats``, which CompressAI's entropy models import at the top but only use
in ``update()`` (building CDF tables, at training and export), costs another fraction of a second.

How: before the first import, :func:`load` registers ``compressai`` (and ``compressai.models``,
``compressai.latent_codecs``) as packages whose ``__init__`` has not run yet, and ``scipy.stats``
likewise. Their submodules import as usual through the package path, so ``from
compressai.entropy_models import GaussianConditional`` loads just that. The first time anything
else is asked of such a package (``compressai.zoo``, ``compressai.datasets``,
``scipy.stats.norm``), its real ``__init__`` runs in place (PEP 562's module ``__getattr__``), so
every other use of CompressAI or SciPy in the same process sees the whole package, only later.
CompressAI's entropy models ask the package which entropy coder is the default at construction;
the package answers "ans", the one CompressAI always has, without running the rest (aecodec codes
with constriction, never with CompressAI's coder). If CompressAI is already imported, nothing is
bent. ``tests/test_imports.py`` checks both halves.
"""

from __future__ import annotations

import importlib.util
import sys
import types

def _defer(name: str, **early: object) -> None:
    """Put package ``name`` in sys.modules with its ``__init__`` not yet run; ``early``: names it
    answers before then."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return  # not installed, or not a package: import it the ordinary way
    module = importlib.util.module_from_spec(spec)

    def complete(attr: str) -> object:  # PEP 562: only for names the module does not have yet
        if attr.startswith("__"):  # the import system's own probes (__spec__, __file__ ...)
            raise AttributeError(attr)
        if importlib.util.find_spec(f"{name}.{attr}") is not None:  # a submodule: ``from compressai import ans``
            return importlib.import_module(f"{name}.{attr}")
        del module.__getattr__
        spec.loader.exec_module(module)  # the real __init__, in the same module object
        return getattr(module, attr)

    module.__getattr__ = complete
    module.__dict__.update(early)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def load() -> None:
    """Defer CompressAI's packages and scipy.stats (a no-op when CompressAI is loaded already)."""
    if "compressai" in sys.modules:
        return
    import scipy  # noqa: F401 (scipy.stats' parent package: small)

    _defer("compressai", get_entropy_coder=lambda: "ans", available_entropy_coders=lambda: ["ans"])
    _defer("compressai.models")
    _defer("compressai.latent_codecs")
    if "scipy.stats" not in sys.modules:
        _defer("scipy.stats")
    # compressai.models.base (CompressionModel) imports LatentCodec from its package
    codecs = sys.modules.get("compressai.latent_codecs")
    if codecs is not None and is_deferred(codecs):
        codecs.LatentCodec = importlib.import_module("compressai.latent_codecs.base").LatentCodec


def is_deferred(module: types.ModuleType) -> bool:
    """Whether a package's real ``__init__`` has not run yet (for tests)."""
    return "__getattr__" in module.__dict__ and getattr(module.__getattr__, "__name__", "") == "complete"
