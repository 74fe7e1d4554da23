"""Saving and loading shipped weights: safetensors (no pickle), config in the metadata.

A weights file holds everything the decoder needs, the rANS CDF tables included, so no
decoder ever recomputes a probability table (which could differ by machine). The fixed-point
hyper synthesis is stored as its exact integers. The analysis/synthesis transforms are stored in
float16 to keep the file small; the file's SHA-256 identifies the exact weights in every
``.aec`` header.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import AecodecError, registry
from .exact import integer_scales
from .registry import DEFAULT_MODEL

FORMAT = "aecodec-weights-1"

# Weights that earlier releases shipped (the 8-byte id every .aec header holds), so that a file
# this release cannot decode names the release that can. Add the outgoing weights at each release.
PAST_WEIGHTS: dict[str, str] = {
    "71cc861f10712727": "aecodec 0.2.0",  # hyperprior-gain
}
Model = torch.nn.Module  # a registered codec model (codec/registry.py)


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
    tensors = {}
    exact = integer_scales(model)  # fixed-point tensors: stored as their exact integers
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        scale = exact.get(name)
        if scale is not None:
            q = torch.round(t.double() * scale)
            t = q.to(torch.int16 if name.endswith(".weight") else torch.int32)
        elif name.startswith(type(model).FP16_PREFIXES) and t.is_floating_point():
            t = t.half()
        tensors[name] = t.contiguous()
    meta = {"format": FORMAT, "model": model.NAME, "config": json.dumps(model.config.to_dict())}
    meta["info"] = json.dumps(info or {})
    data = st_save(tensors, metadata=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def read_metadata(data: bytes, max_header: int | None = None, max_depth: int | None = None) -> dict:
    """The ``__metadata__`` of safetensors bytes (weights or latent files), without loading
    tensors. ``max_header`` / ``max_depth`` bound the JSON header's size and nesting before it
    is parsed (files from outside: a deeply nested header would exhaust Python's recursion)."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or (max_header is not None and n > max_header):
        raise ValueError(f"safetensors header of {n} bytes is too large")
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


def default_weights(model: str = DEFAULT_MODEL) -> Path:
    """The shipped weights file of a registered model ("hyperprior-gain", "vae-kl-f8", ...)."""
    entry = registry.MODELS[model]
    if entry.weights_file is None:
        raise WeightsError(f"no weights ship for model {model} yet: pass a weights file (--weights FILE), "
                           f"or train one with python -m codec.train fit --model {entry.short}")
    return weights_dir() / entry.weights_file


def load_weights(path: str | Path | None = None) -> tuple[Model, str]:
    """Load a model for coding (eval mode, CPU) and the SHA-256 of its file; the file's
    metadata says which model it is."""
    path = Path(path) if path else default_weights()
    try:
        data = path.read_bytes()
        meta = read_metadata(data, max_depth=64)
        if meta.get("format") != FORMAT:
            raise WeightsError(f"{path} is not an aecodec weights file")
        entry = registry.MODELS.get(meta.get("model", DEFAULT_MODEL))
        if entry is None:
            raise WeightsError(f"{path} holds an unknown model {meta['model']!r}")
        cls = entry.cls
        config = cls.CONFIG.from_dict(json.loads(meta["config"]))
        tensors = st_load(data)
    except OSError as e:
        raise WeightsError(f"cannot read weights {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError, SafetensorError) as e:
        raise WeightsError(f"{path} is not a valid weights file ({e})") from None
    try:
        model = cls(config)
        exact = integer_scales(model)
        state = {}
        for name, t in tensors.items():
            scale = exact.get(name)
            if scale is not None:
                t = t.double() / scale  # exact: the stored integers are the fixed-point grid
            state[name] = t.float() if t.is_floating_point() else t
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:  # tensors that do not fit the config
        raise WeightsError(f"{path} does not fit its own config ({str(e).splitlines()[0]})") from None
    model.eval()
    return model, hashlib.sha256(data).hexdigest()


def weights_info(path: str | Path) -> dict:
    """The training record stored in a weights file's metadata."""
    return json.loads(read_metadata(Path(path).read_bytes()).get("info", "{}"))
