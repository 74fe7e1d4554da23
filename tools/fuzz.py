"""Structure-aware fuzzing of the decoders: .aec files of both models and VAE latent files.

    python tools/fuzz.py --cases 5000 --seed 1          # a long run (about 1 case/s/core)

Real files are mutated the way an attacker would: stream bytes flipped, streams cut, grown,
emptied or swapped between files, header fields (size, mode, quality, model) set to other
values, latent-file headers rewritten. The CRC32 is then recomputed, so every case reaches
the entropy decoder and the networks instead of stopping at the checksum.

Cases run in a worker process under a memory cap (RLIMIT_AS), each with a timeout. Each case
is decoded twice. Acceptable outcomes: the same pixels both times, or one of aecodec's own
errors (FormatError, CodecError, WeightsError: a one-line message on the command line).
Anything else is a failure: a crash (the worker dies by a signal), a hang, a MemoryError,
any other exception, or two different results from one file. The worker is
restarted after a failure and the run goes on; the failing inputs are saved with --save.
``tests/test_hostile.py`` runs a few hundred cases of the same harness.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import select
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))
from codec.format.bitstream import FIXED_HEADER as _FIXED  # noqa: E402 (the header, as the container lays it out)

# --- mutations ---------------------------------------------------------------------------


def _split(data: bytes) -> tuple[bytes, list[bytes]]:
    n = data[_FIXED.size - 1]
    lengths = struct.unpack_from(f">{n}I", data, _FIXED.size)
    pos, streams = _FIXED.size + 4 * n, []
    for length in lengths:
        streams.append(data[pos : pos + length])
        pos += length
    return data[: _FIXED.size], streams


def _join(fixed: bytes, streams: list[bytes]) -> bytes:
    fixed = fixed[:-1] + bytes([len(streams) % 256])
    body = fixed + b"".join(struct.pack(">I", len(s)) for s in streams) + b"".join(streams)
    return body + struct.pack(">I", zlib.crc32(body))


def _flip(b: bytes, rng: random.Random) -> bytes:
    if not b:
        return b
    a = bytearray(b)
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(len(a))
        a[i] = rng.randrange(256) if rng.random() < 0.5 else a[i] ^ (1 << rng.randrange(8))
    return bytes(a)


def mutate_aec(data: bytes, others: list[bytes], rng: random.Random) -> bytes:
    """One structure-aware mutation of a valid .aec file, CRC recomputed."""
    fixed, streams = _split(data)
    f = bytearray(fixed)
    kind = rng.randrange(10)
    i = rng.randrange(len(streams))
    if kind == 0:  # flip bytes of one stream
        streams[i] = _flip(streams[i], rng)
    elif kind == 1:  # cut a stream (often to nothing)
        streams[i] = streams[i][: rng.choice([0, 0, 4, rng.randrange(len(streams[i]) + 1)])]
    elif kind == 2:  # grow a stream with random or zero words
        streams[i] += bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 64]))) if rng.random() < 0.5 \
            else bytes(4 * rng.randrange(1, 64))
    elif kind == 3:  # a stream from another file
        other = _split(rng.choice(others))[1]
        streams[i] = rng.choice(other)
    elif kind == 4:  # another width / height, small or large
        w, h = rng.choice([(1, 1), (rng.randrange(1, 300), rng.randrange(1, 300)), (4096, 4096),
                           (8192, 8192), (65535, 1024), (rng.randrange(1, 65536), rng.randrange(1, 65536))])
        struct.pack_into(">II", f, 17, w, h)
    elif kind == 5:  # another quality
        f[14] = rng.choice([0, 1, 50, 100, 101, 255, rng.randrange(256)])
    elif kind == 6:  # another mode (stream count follows, or not)
        f[15] = rng.randrange(6)
    elif kind == 7:  # another model id, or other flags
        if rng.random() < 0.5:
            f[5] = rng.randrange(5)
        else:
            f[16] = rng.choice([0, 1, 2, 255])
    elif kind == 8:  # swap two streams
        j = rng.randrange(len(streams))
        streams[i], streams[j] = streams[j], streams[i]
    else:  # several at once
        return mutate_aec(mutate_aec(data, others, rng), others, rng)
    return _join(bytes(f), streams)


def mutate_latent(data: bytes, rng: random.Random) -> bytes:
    """One mutation of a safetensors latent file (header JSON or tensor bytes)."""
    n = int.from_bytes(data[:8], "little")
    header, body = data[8 : 8 + n], data[8 + n :]
    kind = rng.randrange(6)
    if kind == 0:
        header = _flip(header, rng)
    elif kind == 1:
        body = _flip(body, rng)
    elif kind == 2:  # deep nesting
        d = rng.choice([10, 100, 5000])
        header = header[:-1] + b', "x": ' + b"[" * d + b"]" * d + b"}"
    elif kind == 3:  # other declared size
        for key in (b'"width":"', b'"height":"'):
            i = header.find(key)
            if i >= 0:
                j = header.index(b'"', i + len(key))
                header = header[: i + len(key)] + str(rng.choice([0, 1, 1025, 65535, 10**9])).encode() + header[j:]
    elif kind == 4:  # wrong header length field
        return rng.choice([0, 1, n - 1, n + 1, 2**63]).to_bytes(8, "little") + header + body
    else:  # truncated
        return data[: rng.randrange(len(data))]
    return len(header).to_bytes(8, "little") + header + body


def seeds() -> tuple[list[bytes], list[bytes]]:
    """Real files to start from: small .aec files of both models (several modes, qualities)
    and latent files, made from generated images (no data set needed)."""
    import numpy as np
    from PIL import Image

    from codec.api import Codec
    from codec import registry
    from codec.weights import default_weights

    rng = np.random.default_rng(0)

    def image(w: int, h: int, mode: str) -> Image.Image:
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) % 64 * 4], -1) + rng.normal(0, 8, (h, w, 3))
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
        if mode == "RGBA":
            im = im.convert("RGBA")
            im.putalpha(Image.fromarray((xx * 255 // w).astype(np.uint8), "L"))
        return im.convert(mode) if mode == "L" else im

    hp, vae = Codec(device="cpu", model="hyperprior-gain"), Codec(device="cpu", model="vae-kl-f8")
    with_metadata = image(40, 24, "RGB")
    exif = Image.Exif()
    exif[0x010E] = "fuzz seed"
    with_metadata.info.update(icc_profile=bytes(range(256)) * 2, exif=exif.tobytes())
    aec = [hp.compress(image(48, 40, "RGB"), 75), hp.compress(image(70, 33, "RGBA"), 20),
           hp.compress(image(30, 64, "L"), 95), hp.compress(with_metadata, 50),
           vae.compress(image(48, 40, "RGB"), 60), vae.compress(image(33, 17, "RGBA"), 90)]
    if registry.MODELS["cc-hyperprior-gain"].weights_file and default_weights("cc-hyperprior-gain").exists():
        cc = Codec(device="cpu", model="cc-hyperprior-gain")
        aec += [cc.compress(image(48, 40, "RGB"), 60), cc.compress(image(70, 33, "LA"), 30)]
    latents = [vae.encode_latent(image(40, 24, "RGB")), vae.encode_latent(image(17, 9, "L"))]
    return aec, latents


def cases(n: int, seed: int, aec: list[bytes], latents: list[bytes]) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.8:
            out.append(("aec", mutate_aec(rng.choice(aec), aec, rng)))
        else:
            out.append(("latent", mutate_latent(rng.choice(latents), rng)))
    return out


# --- the worker: decodes what it is sent, twice, and says what happened --------------------

def worker(max_pixels: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    from codec import AecodecError  # FormatError, CodecError, WeightsError: clean refusals
    from codec.api import Codec, read_header

    torch.set_num_threads(1)
    codecs: dict[str, Codec] = {}

    def codec(model: str) -> Codec:
        if model not in codecs:
            codecs[model] = Codec(device="cpu", model=model, max_pixels=max_pixels)
        return codecs[model]

    def decode(kind: str, data: bytes) -> str:
        if kind == "latent":
            image = codec("vae-kl-f8").decode_latent(data)
        else:
            image = codec(read_header(data).model).decompress(data)
        return hashlib.sha256(image.mode.encode() + repr(image.size).encode() + image.tobytes()).hexdigest()[:16]

    inp, out = sys.stdin.buffer, sys.stdout
    print("ready", file=out, flush=True)
    while True:
        head = inp.read(9)
        if len(head) < 9:
            return
        kind = "latent" if head[:1] == b"l" else "aec"
        data = inp.read(int.from_bytes(head[1:], "little"))
        results = []
        for _ in range(2):
            try:
                results.append("ok " + decode(kind, data))
            except AecodecError as e:
                results.append(f"refused {type(e).__name__}: {e}")
            except BaseException as e:  # noqa: BLE001 - the point is to see everything
                results.append(f"FAIL {type(e).__name__}: {e}")
        line = results[0] if results[0] == results[1] else f"FAIL nondeterministic: {results[0]} / {results[1]}"
        print(line.replace("\n", " ")[:300], file=out, flush=True)


class Runner:
    """Feeds cases to a worker process under a memory cap; restarts it when it dies or hangs."""

    def __init__(self, max_pixels: int, mem_mb: int, timeout: float):
        self.max_pixels, self.mem_mb, self.timeout = max_pixels, mem_mb, timeout
        self.proc: subprocess.Popen | None = None

    def _start(self) -> None:
        def cap() -> None:
            import resource

            limit = self.mem_mb * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "--max-pixels", str(self.max_pixels)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=cap,
            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
        if self._line(120) != "ready":
            raise RuntimeError("fuzz worker did not start")

    def _line(self, timeout: float) -> str | None:
        assert self.proc and self.proc.stdout
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return line.decode().rstrip("\n") if line else ""

    def run(self, kind: str, data: bytes) -> str:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc and self.proc.stdin
        self.proc.stdin.write((b"l" if kind == "latent" else b"a") + len(data).to_bytes(8, "little") + data)
        self.proc.stdin.flush()
        line = self._line(self.timeout)
        if line is None:
            self.close()
            return f"FAIL hang (no answer in {self.timeout:g} s)"
        if line == "":
            code = self.proc.wait()
            self.proc = None
            return f"FAIL crash (worker exit status {code})"
        return line

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def fuzz(n: int, seed: int, max_pixels: int = 1 << 16, mem_mb: int = 6144, timeout: float = 60,
         save: Path | None = None, progress: bool = False) -> Counter:
    """Run ``n`` cases; returns a Counter of outcome classes (failures start with 'FAIL')."""
    aec, latents = seeds()
    runner, outcomes = Runner(max_pixels, mem_mb, timeout), Counter()
    try:
        for k, (kind, data) in enumerate(cases(n, seed, aec, latents)):
            result = runner.run(kind, data)
            outcomes[result.split(":")[0] if not result.startswith("ok") else "ok (decoded, deterministic)"] += 1
            if result.startswith("FAIL"):
                print(f"case {k} ({kind}, {len(data)} bytes): {result}", file=sys.stderr)
                if save:
                    save.mkdir(parents=True, exist_ok=True)
                    (save / f"case{k}.{'safetensors' if kind == 'latent' else 'aec'}").write_bytes(data)
            if progress and (k + 1) % 100 == 0:
                print(f"{k + 1}/{n} cases, {sum(v for o, v in outcomes.items() if o.startswith('FAIL'))} failures",
                      file=sys.stderr, flush=True)
    finally:
        runner.close()
    return outcomes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=1000, help="number of mutated files (default: 1000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    p.add_argument("--max-pixels", type=int, default=1 << 16,
                   help="decoding pixel limit in the worker, so that grown headers stay quick (default: 65536)")
    p.add_argument("--mem-mb", type=int, default=6144, help="worker address-space cap in MiB (default: 6144)")
    p.add_argument("--timeout", type=float, default=60, help="seconds a case may take (default: 60)")
    p.add_argument("--save", type=Path, help="folder to keep failing inputs in")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.max_pixels)
        return 0
    sys.path.insert(0, str(ROOT))
    t = time.time()
    outcomes = fuzz(args.cases, args.seed, args.max_pixels, args.mem_mb, args.timeout, args.save, progress=True)
    print(f"{args.cases} cases in {time.time() - t:.0f} s:")
    for outcome, count in outcomes.most_common():
        print(f"  {count:6d}  {outcome}")
    return 1 if any(o.startswith("FAIL") for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
