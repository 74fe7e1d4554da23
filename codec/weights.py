"""Saving and loading shipped weights: safetensors (no pickle), config in the metadata.

A weights file holds everything the decoder needs, the rANS CDF tables included, so no
decoder ever recomputes a probability table (which could differ by machine). The fixed-point
hyper synthesis is stored as its exact integers. To keep the file small, the analysis/synthesis
transforms are stored in float16, the layers a model names in ``INT8_PREFIXES`` as int8 with a
scale per output channel (encoder-only layers, which only choose what is coded, and small
corrections whose int8 error is lost in them), and the CDF tables without their zero padding.
The file's SHA-256 identifies the exact weights in every ``.aec`` header.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError

from codec import AecodecError, registry
from codec.files import write_atomic
from codec.format.tensors import read_metadata  # noqa: F401 (public here too)
from codec.registry import DEFAULT_MODEL

if TYPE_CHECKING:  # torch loads when weights do: finding a file and its id needs none
    import torch

FORMAT = "aecodec-weights-1"
INT8_SCALE = ".int8_scale"  # key suffix: per-output-channel scale of an int8-stored weight
CDF = "._quantized_cdf"  # CompressAI's CDF table: rows zero-padded to the longest, lengths in ._cdf_length
MAX_WEIGHTS_BYTES = 2**30  # read whole into memory: the shipped files are 7.5 to 28.5 MB
MAX_CDF_ENTRIES = 2**23  # of all padded CDF tables of a file together (shipped: 128 x 77 + 64 x 3133)

Model = "torch.nn.Module"  # a registered codec model (codec/registry.py)


class WeightsError(AecodecError):
    """A weights file is missing, unreadable or not an aecodec weights file."""


def weights_dir() -> Path:
    """``$AECODEC_WEIGHTS_DIR``, else the repo's ``weights/``, else the installed copy."""
    env = os.environ.get("AECODEC_WEIGHTS_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parent.parent / "weights"
    if repo.is_dir():
        return repo
    return Path(sys.prefix) / "share" / "aecodec" / "weights"


def save_weights(model: Model, path: str | Path, info: dict | None = None) -> str:
    """Write ``model`` (after ``model.update()``) to ``path`` atomically; returns its hash."""
    import torch

    from codec.models.exact import integer_scales

    tensors = {}
    exact = integer_scales(model)  # fixed-point tensors: stored as their exact integers
    cls = type(model)
    state = model.state_dict()
    for name, t in state.items():
        t = t.detach().cpu()
        scale = exact.get(name)
        if scale is not None:
            q = torch.round(t.double() * scale)
            t = q.to(torch.int16 if name.endswith(".weight") else torch.int32)
        elif name.startswith(getattr(cls, "INT8_PREFIXES", ())) and name.endswith(".weight"):
            s = t.float().abs().amax(dim=tuple(range(1, t.dim())), keepdim=True).clamp_min(1e-30) / 127
            tensors[name + INT8_SCALE] = s.contiguous()
            t = torch.round(t.float() / s).to(torch.int8)
        elif name.startswith(cls.FP16_PREFIXES) and t.is_floating_point():
            t = t.half()
        elif name.endswith(CDF):  # the rows without their padding, one after another
            lengths = state[name[: -len(CDF)] + "._cdf_length"].tolist()
            t = torch.cat([row[:n] for row, n in zip(t, lengths)])
        tensors[name] = t.contiguous()
    meta = {"format": FORMAT, "model": model.NAME, "config": json.dumps(model.config.to_dict())}
    meta["info"] = json.dumps(info or {})
    data = safetensors_bytes(tensors, meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, force=True)
    return hashlib.sha256(data).hexdigest()


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """safetensors' bytes with the header's keys sorted. safetensors writes the metadata in a
    different order on each call, so equal tensors would make different files (and hashes)."""
    from safetensors.torch import save as st_save

    data = st_save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the tensors start 8-byte aligned, as safetensors pads
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def _unpack(tensors: dict[str, torch.Tensor], model: Model) -> dict[str, torch.Tensor]:
    """The state dict that :func:`save_weights` stored, for ``model``: names are checked against
    the model's own before anything is expanded (raises ValueError/KeyError if the tensors do not
    fit together)."""
    import torch

    from codec.models.exact import integer_scales

    tensors = getattr(model, "upgrade_names", lambda state: state)(tensors)  # earlier releases' names
    names = set(model.state_dict())
    unknown = set(tensors) - names - {n + INT8_SCALE for n in names}
    if unknown:
        raise ValueError(f"unexpected tensor {sorted(unknown)[0]}")
    exact = integer_scales(model)
    cdf_budget = MAX_CDF_ENTRIES
    state = {}
    for name, t in tensors.items():
        if name.endswith(INT8_SCALE):
            continue
        scale = exact.get(name)
        if scale is not None:
            if t.is_floating_point():  # the fixed-point grid is what makes decoding exact
                raise ValueError(f"{name} is not stored as exact integers")
            t = t.double() / scale
        elif t.dtype == torch.int8:
            s = tensors[name + INT8_SCALE].float()
            if t.dim() < 1 or s.shape != (t.shape[0],) + (1,) * (t.dim() - 1) or not s.isfinite().all():
                raise ValueError(f"{name}{INT8_SCALE} does not fit {name}")
            t = t.float() * s
        elif name.endswith(CDF) and t.dim() == 1:
            owner = name[: -len(CDF)]
            t = _padded_cdf(name, t, tensors[owner + "._cdf_length"], tensors[owner + "._offset"], cdf_budget)
            cdf_budget -= t.numel()
        state[name] = t.float() if t.is_floating_point() else t
    return state


def _padded_cdf(name: str, flat: torch.Tensor, lengths: torch.Tensor, offsets: torch.Tensor,
                budget: int) -> torch.Tensor:
    """CompressAI's padded CDF table from its rows stored one after another. The lengths come
    from the file: checked, and the table (rows x longest) held to ``budget`` entries, before
    it is allocated."""
    import torch

    n = lengths.tolist()
    if (lengths.dim() != 1 or not n or len(n) != offsets.numel() or min(n) < 3  # 3: the coder's least
            or len(n) * max(n) > budget or sum(n) != flat.numel()):
        raise ValueError(f"{name} does not fit its lengths")
    table = torch.zeros(len(n), max(n), dtype=flat.dtype)
    mask = torch.arange(max(n)) < lengths.unsqueeze(1)  # row-major, as the rows were stored
    table[mask] = flat
    return table


def weights_id(path: str | Path) -> str:
    """The 16 hex digits that name a weights file in every .aec header (its SHA-256's first 8 bytes).
    Hashed once per file version (path, size, modification time): a decompress of many files with
    --weights asks for each."""
    info = os.stat(path)
    return _hashed_id(str(Path(path).resolve()), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _hashed_id(path: str, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(_read_capped(Path(path))).hexdigest()[:16]


def weights_for(file_weights_id: str, given: str | Path | None = None) -> Path:
    """The weights file that decodes a file written by weights ``file_weights_id``: ``given``
    (``--weights``) if it is that file, else the released file of that id. Says why not, without
    loading torch, so a file nothing can decode is refused before any model loads."""
    if given is not None:
        own = weights_id(given)
        if own == file_weights_id:
            return Path(given)
        release = registry.RELEASED_WEIGHTS.get(file_weights_id)
        hint = (f"; without --weights, {release[0]}'s shipped weights decode it" if release
                else ": " + registry.unknown_weights(file_weights_id))
        raise WeightsError(f"written by weights {file_weights_id}, not by those of {given} ({own}){hint}")
    if file_weights_id in registry.RELEASED_WEIGHTS:
        path = weights_dir() / registry.RELEASED_WEIGHTS[file_weights_id][1]
        if not path.is_file():
            raise WeightsError(f"written by {registry.RELEASED_WEIGHTS[file_weights_id][0]}'s weights, "
                               f"whose file {path} is missing from this installation")
        return path
    raise WeightsError(f"written by {registry.unknown_weights(file_weights_id)}")


def default_weights(model: str = DEFAULT_MODEL) -> Path:
    """The shipped weights file of a registered model ("hyperprior-gain", "vae-kl-f8", ...)."""
    entry = registry.MODELS[model]
    if entry.weights_file is None:
        raise WeightsError(f"no weights ship for model {model} yet: pass a weights file (--weights FILE), "
                           f"or train one with python -m codec.train fit --model {entry.short}")
    return weights_dir() / entry.weights_file


def _read_capped(path: Path) -> bytes:
    """A weights file's bytes, refusing what is not a regular file (/dev/zero, a pipe) or is
    larger than any weights file we make, before reading it whole."""
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise WeightsError(f"{path} is not a regular file")
        if info.st_size > MAX_WEIGHTS_BYTES:
            raise WeightsError(f"{path} is {info.st_size:,} bytes, larger than any weights file "
                               f"(at most {MAX_WEIGHTS_BYTES:,})")
        return f.read(MAX_WEIGHTS_BYTES + 1)


def load_weights(path: str | Path | None = None, model: str | None = None) -> tuple[Model, str]:
    """Load a model for coding (eval mode, CPU) and the SHA-256 of its file. The file's metadata
    says which model it holds; ``model`` asks for that one or for a model it contains (the
    channel-conditional file holds the hyperprior: same transforms, no slice networks)."""
    if model is not None and model not in registry.MODELS:
        raise WeightsError(f"unknown model {model!r} (known: {', '.join(registry.MODELS)})")
    path = Path(path) if path else default_weights(model or DEFAULT_MODEL)
    try:
        data = _read_capped(path)
        meta = read_metadata(data, max_depth=64)
        if meta.get("format") != FORMAT:
            raise WeightsError(f"{path} is not an aecodec weights file")
        entry = registry.MODELS.get(meta.get("model", "hyperprior-gain"))  # the first files named none
        if entry is None:
            raise WeightsError(f"{path} holds an unknown model {meta['model']!r}")
        cls = entry.cls
        config = cls.CONFIG.from_dict(json.loads(meta["config"]))
        from safetensors.torch import load as st_load

        tensors = st_load(data)
    except OSError as e:
        raise WeightsError(f"cannot read weights {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, SafetensorError) as e:
        raise WeightsError(f"{path} is not a valid weights file ({e})") from None
    try:
        loaded = cls(config)
        loaded.load_state_dict(_unpack(tensors, loaded))
    except (RuntimeError, ValueError, TypeError, KeyError) as e:  # tensors that do not fit the config
        raise WeightsError(f"{path} does not fit its own config ({str(e).splitlines()[0]})") from None
    if model is not None and model != loaded.NAME:
        inner = getattr(loaded, "submodel", lambda name: None)(model)
        if inner is None:
            raise WeightsError(f"{path} holds model {loaded.NAME}, not {model}")
        loaded = inner
    loaded.eval()
    return loaded, hashlib.sha256(data).hexdigest()


def weights_info(path: str | Path) -> dict:
    """The training record stored in a weights file's metadata."""
    return json.loads(read_metadata(Path(path).read_bytes()).get("info", "{}"))
