"""How good the f8 VAE is as an autoencoder: reconstruction and latent statistics on a folder.

    python tools/vae_report.py ../shared/data/kodak --out bench-out/vae-kodak.json

Reconstruction goes image -> posterior mean -> decoder -> 8-bit image (no quantisation of the
latent: that is the codec's job, measured by ``aecodec bench``), on full images and on
256x256 centre crops (the size published kl-f8 figures use). Latent statistics are per channel,
after the normalisation stored with the weights, over every latent element of the full images.
Colour: the 24 patches of a colour checker chart (64 px each) through a latent file (``vae
encode`` / ``vae decode``) and through ``compress --model vae`` at the default quality, as the
CIE76 error of each patch's centre in CIELAB (2.3 is just noticeable; the target is a mean of at
most 4 and no patch above 10).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from codec.api import Codec, pad_to_stride
from codec.bench import list_images
from codec.api import DEFAULT_QUALITY
from codec.metrics import COLOR_CHECKER_NAMES, chart_errors, color_checker_chart, ms_ssim_rgb, psnr
from codec.image import merge, split


def reconstruct(codec: Codec, image: Image.Image) -> tuple[np.ndarray, torch.Tensor]:
    """8-bit reconstruction through the posterior mean, and the scaled latent."""
    vae = codec.model
    x, _ = split(image, "RGB")
    with torch.no_grad():
        mean, _ = vae.encode(pad_to_stride(x.to(codec.device), vae.padding))
        x_hat = vae.decode(mean)[..., : image.size[1], : image.size[0]].float().cpu()
    return np.asarray(merge(x_hat, "RGB", None)), vae.scale(mean).float().cpu()


def save_picture(image: Image.Image, decoded: Image.Image, path: Path) -> None:
    """The image (left) and its reconstruction (right), each at half size, as one JPEG."""
    half = (image.width // 2, image.height // 2)
    pair = Image.new("RGB", (2 * half[0], half[1]))
    pair.paste(image.resize(half, Image.Resampling.LANCZOS), (0, 0))
    pair.paste(decoded.resize(half, Image.Resampling.LANCZOS), (half[0], 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    pair.save(path, quality=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="folder of images (e.g. the 24 Kodak images)")
    p.add_argument("--weights", help="VAE weights (default: the shipped weights/aecodec-vae-f8.safetensors)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--crop", type=int, default=256, help="centre crop side (default: 256)")
    p.add_argument("--out", help="write the numbers as JSON here too")
    p.add_argument("--pictures", metavar="DIR", help="write DIR/NAME-vae.jpg for the images of --picture-names: "
                   "the image and its reconstruction side by side, at half size")
    p.add_argument("--picture-names", default="kodim03,kodim23", help="image names (no extension) for --pictures")
    args = p.parse_args(argv)

    codec = Codec(args.weights, device=args.device, model="vae-kl-f8")
    rows, latents = [], []
    for path in tqdm(list_images(Path(args.dir)), desc="images", file=sys.stderr):
        image = Image.open(path).convert("RGB")
        w, h = image.size
        c = args.crop
        crop = image.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
        full, z = reconstruct(codec, image)
        cropped, _ = reconstruct(codec, crop)
        a, b = np.asarray(image), np.asarray(crop)
        rows.append({"image": path.name, "psnr": psnr(a, full), "ms_ssim": ms_ssim_rgb(a, full),
                     "crop_psnr": psnr(b, cropped), "crop_ms_ssim": ms_ssim_rgb(b, cropped)})
        latents.append(z[0].flatten(1))
        if args.pictures and path.stem in args.picture_names.split(","):
            save_picture(image, Image.fromarray(full), Path(args.pictures) / f"{path.stem}-vae.jpg")
    z = torch.cat(latents, dim=1)
    chart = Image.fromarray(color_checker_chart())
    colour = {}
    for way, decoded in (("latent file", codec.decode_latent(codec.encode_latent(chart))),
                         (f"compress q {DEFAULT_QUALITY}", codec.decompress(codec.compress(chart, DEFAULT_QUALITY)))):
        errors = chart_errors(decoded)
        colour[way] = {"mean": round(float(errors.mean()), 2), "worst": round(float(errors.max()), 2),
                       "worst_patch": COLOR_CHECKER_NAMES[int(errors.argmax())],
                       "per_patch": {n: round(float(e), 2) for n, e in zip(COLOR_CHECKER_NAMES, errors)}}
    report = {
        "weights": codec.weights_sha256[:16],
        "images": len(rows),
        "full": {"psnr": float(np.mean([r["psnr"] for r in rows])),
                 "ms_ssim": float(np.nanmean([r["ms_ssim"] for r in rows]))},
        f"crop{args.crop}": {"psnr": float(np.mean([r["crop_psnr"] for r in rows])),
                             "ms_ssim": float(np.nanmean([r["crop_ms_ssim"] for r in rows]))},
        "scaled_latent": {"channel_mean": [round(float(v), 4) for v in z.mean(1)],
                          "channel_std": [round(float(v), 4) for v in z.std(1)],
                          "mean": float(z.mean()), "std": float(z.std())},
        "colour_error_cie76": colour,
        "per_image": rows,
    }
    print(f"{len(rows)} images, weights {report['weights']}")
    print(f"full images: PSNR {report['full']['psnr']:.2f} dB, MS-SSIM {report['full']['ms_ssim']:.4f}")
    print(f"{args.crop}x{args.crop} centre crops: PSNR {report[f'crop{args.crop}']['psnr']:.2f} dB, "
          f"MS-SSIM {report[f'crop{args.crop}']['ms_ssim']:.4f}")
    print(f"scaled latent per channel: mean {report['scaled_latent']['channel_mean']}, "
          f"std {report['scaled_latent']['channel_std']}")
    for way, c in colour.items():
        print(f"colour checker, {way}: CIE76 mean {c['mean']:.1f}, worst {c['worst']:.1f} ({c['worst_patch']})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
