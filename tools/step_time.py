"""Seconds per training step of the shipped channel-conditional model in each precision and
memory format, to choose ``train fit --precision`` on a new CPU (``--precision auto`` times the
first and last of these itself).

    python tools/step_time.py --threads 2

One step: forward and backward of the rate-distortion loss on a batch of 4 x 256^2 random
crops, as ``codec.train`` takes it; best of 3 after a warm-up. Nothing else should run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    p.add_argument("--batch", type=int, default=4, help="crops per step (default: 4)")
    args = p.parse_args(argv)

    import torch

    from codec.train.rd import rd_loss
    from codec.weights import load_weights

    torch.set_num_threads(args.threads)
    model, _ = load_weights(model="cc-hyperprior-gain")
    model.train()
    torch.manual_seed(0)
    x, pos = torch.rand(args.batch, 3, 256, 256), torch.rand(args.batch) * (len(model.config.lambdas) - 1)
    print(f"batch {args.batch} x 256^2, {args.threads} threads, best of 3 steps after a warm-up")
    for name, fmt, bf16 in (("float32", torch.contiguous_format, False),
                            ("float32 + channels_last", torch.channels_last, False),
                            ("bf16 autocast + channels_last", torch.channels_last, True)):
        model.to(memory_format=fmt)
        xs = x.contiguous(memory_format=fmt)
        times = []
        for _ in range(4):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = rd_loss(model, xs, pos)["loss"]
            model.zero_grad(set_to_none=True)
            loss.backward()
            times.append(time.perf_counter() - t)
        print(f"{name}: {min(times[1:]):.2f} s/step", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
