"""Edges against the interior: each image coded with its padding after it (as files of 0.15.0 and
before) and centred in the canvas (since 0.16.0), through the same model and quality; prints bytes,
PSNR of the outermost rows and columns, and PSNR overall.

    python tools/edges.py ../shared/data/val --images 6 --size 500x333 --quality 50

Images are cropped at the top left to --size (a size that needs padding); never Kodak for tuning.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder of images")
    p.add_argument("--images", type=int, default=6, help="how many of its images (default: 6)")
    p.add_argument("--size", default="500x333", help="WxH crop (default: 500x333)")
    p.add_argument("--quality", type=int, default=50, help="quality (default: 50)")
    args = p.parse_args(argv)

    import numpy as np
    from PIL import Image

    from codec.api import Codec, pad_to_stride
    from codec.bench import list_images
    from codec.image import split
    from codec.metrics import psnr

    w, h = (int(v) for v in args.size.split("x"))
    codec = Codec(device="cpu")
    model, q = codec.model, args.quality
    total = {False: [0, 0.0], True: [0, 0.0]}
    for path in list_images(Path(args.folder))[: args.images]:
        a = np.asarray(Image.open(path).convert("RGB"))[:h, :w]
        for centred in (False, True):
            x = pad_to_stride(split(Image.fromarray(a), "RGB")[0], model.padding, centred)
            streams, shape = model.compress(x, q)
            top, left = ((x.shape[-2] - a.shape[0]) // 2, (x.shape[-1] - a.shape[1]) // 2) if centred else (0, 0)
            y = model.decompress(streams, shape, q)[0, :, top : top + a.shape[0], left : left + a.shape[1]]
            b = (y.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
            n = sum(map(len, streams))
            edges = " ".join(f"{psnr(a[e], b[e]):5.1f}" for e in (np.s_[:1], np.s_[-1:], np.s_[:, :1], np.s_[:, -1:]))
            print(f"{path.name:32s} {'centred' if centred else 'after  '} {n:7,d} B  edges T B L R {edges}  "
                  f"all {psnr(a, b):.2f} dB")
            total[centred][0] += n
            total[centred][1] += psnr(a, b) / args.images
    (b0, p0), (b1, p1) = total[False], total[True]
    print(f"padding after: {b0:,} B, mean {p0:.2f} dB; "
          f"centred: {b1:,} B ({100 * (b1 / b0 - 1):+.1f}%), mean {p1:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
