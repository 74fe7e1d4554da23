"""The training script end to end on a tiny generated folder: fit, resume, export, code with it."""

from __future__ import annotations

import torch

from codec.api import Codec
from codec.train import main
from conftest import make_image


def test_fit_resume_export_and_use(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        make_image(80, 72, seed=i).save(data / f"{i}.png")
    run = tmp_path / "run"
    common = ["--data", str(data), "--val", str(data), "--out", str(run), "--patch-size", "64",
              "--batch-size", "2", "--val-every", "2", "--N", "16", "--M", "24", "--device", "cpu"]
    main(["fit", *common, "--steps", "2"])
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 2
    main(["fit", *common, "--steps", "3", "--resume", str(run / "last.pt")])
    assert torch.load(run / "last.pt", weights_only=False)["step"] == 3
    weights = tmp_path / "w.safetensors"
    main(["export", str(run / "best.pt"), str(weights)])
    main(["fit", *common, "--steps", "1", "--init", str(weights), "--out", str(tmp_path / "run2")])
    codec = Codec(weights, device="cpu")
    image = make_image(40, 30)
    assert codec.decompress(codec.compress(image, 50)).size == (40, 30)
