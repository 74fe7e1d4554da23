"""What training reads: images (decoded once into memory: on a 2-core CPU, JPEG decoding per step
would cost as much as the model), random and centre crops, and checkpoints."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from codec import registry
from codec.image import IMAGE_SUFFIXES, image_files

def list_images(folder: str | Path) -> list[Path]:
    if not Path(folder).is_dir():
        raise SystemExit(f"error: {folder}: no such folder")
    files = image_files(folder)
    if not files:
        raise SystemExit(f"error: {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def load_images(files: list[Path], min_side: int) -> list[torch.Tensor]:
    """Decode every image once to uint8 CHW tensors (skipping ones smaller than a crop)."""
    images = []
    for f in tqdm(files, desc="loading images", leave=False):
        with Image.open(f) as im:
            a = np.asarray(im.convert("RGB"))
        if min(a.shape[:2]) >= min_side:
            images.append(torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous())
    return images


def random_batch(images: list[torch.Tensor], batch: int, size: int, gen: random.Random) -> torch.Tensor:
    """Random crops with random horizontal flips, as float in [0, 1]."""
    out = torch.empty(batch, 3, size, size)
    for i in range(batch):
        im = images[gen.randrange(len(images))]
        top = gen.randrange(im.shape[1] - size + 1)
        left = gen.randrange(im.shape[2] - size + 1)
        crop = im[:, top : top + size, left : left + size]
        if gen.random() < 0.5:
            crop = crop.flip(-1)
        out[i] = crop.float() / 255
    return out


def centre_crop(im: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    s = min(size, im.shape[1] // 64 * 64, im.shape[2] // 64 * 64)  # small images: smaller crops
    t, l = (im.shape[1] - s) // 2, (im.shape[2] - s) // 2
    return (im[:, t : t + s, l : l + s].float() / 255)[None].to(device)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint of ``fit``, or a one-line refusal: a missing file, a file that is not a
    torch checkpoint, or one that is not ours are all a user's mistake, not a bug."""
    if not Path(path).is_file():
        raise SystemExit(f"error: {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # ours: it holds the run's args
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip), EOFError...
        raise SystemExit(f"error: {path}: not a training checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or not {"step", "model", "config"} <= ckpt.keys():
        raise SystemExit(f"error: {path}: not a checkpoint of codec.train fit (no step, model or config)")
    entry = next((e for e in registry.MODELS.values() if e.short == ckpt.get("kind", "hp")), None)
    upgrade = getattr(entry.cls, "upgrade_names", None) if entry else None
    for key in ("model", "ema"):  # tensor names of earlier releases -> today's (export --average mixes them)
        if upgrade and isinstance(ckpt.get(key), dict):
            try:
                ckpt[key] = upgrade(ckpt[key])
            except ValueError as e:
                raise SystemExit(f"error: {path}: {e}") from None
    return ckpt


def model_of(ckpt: dict) -> torch.nn.Module:
    """The model a checkpoint holds (its kind, config and weights)."""
    cls = registry.by_short(ckpt.get("kind", "hp")).cls
    model = cls(cls.CONFIG.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model
