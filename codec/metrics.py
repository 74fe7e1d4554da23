"""The quality measures, defined once: training, benchmark, tools and tests all use these.

PSNR is over all pixels and channels of 8-bit RGB (MAX 255), or of [0, 1] tensors (MAX 1) in
training, from the mean squared error; a perfect match is capped at 100 dB rather than infinite,
so averages stay finite.
"""

from __future__ import annotations

import math

import numpy as np

PSNR_CAP = 100.0
MSSSIM_MIN_SIDE = 161  # pytorch_msssim: short side must exceed (win_size - 1) * 2**4 = 160


def psnr_from_mse(mse, peak: float = 1.0):
    """PSNR in dB of a mean squared error (a float, or a tensor of per-image values)."""
    floor = peak**2 * 10 ** (-PSNR_CAP / 10)
    if isinstance(mse, (int, float)):
        return PSNR_CAP if mse <= floor else 10.0 * math.log10(peak**2 / mse)
    return 10 * (peak**2 / mse.clamp_min(floor)).log10()


def psnr(a, b) -> float:
    """PSNR in dB of two 8-bit images (numpy arrays or PIL images of one size and mode)."""
    x, y = np.asarray(a, dtype=np.int32), np.asarray(b, dtype=np.int32)
    return psnr_from_mse(float(np.mean(np.square(x - y), dtype=np.float64)), 255.0)


def psnr_yuv420(a, b) -> float:
    """PSNR in dB over the samples of two RGB images in YCbCr 4:2:0 (BT.601, each 2x2 block's
    chroma averaged): one luma sample per pixel and a Cb and a Cr per four, the measure cwebp's
    ``-psnr`` targets. Luma weighs 4 to 1 to 1 here, where PSNR-RGB weighs the channels equally."""
    def planes(image) -> list[np.ndarray]:
        ycc = np.asarray(image.convert("RGB").convert("YCbCr"), dtype=np.float64)
        h, w = ycc.shape[0] + ycc.shape[0] % 2, ycc.shape[1] + ycc.shape[1] % 2
        ycc_even = np.pad(ycc, ((0, h - ycc.shape[0]), (0, w - ycc.shape[1]), (0, 0)), mode="edge")
        chroma = ycc_even[..., 1:].reshape(h // 2, 2, w // 2, 2, 2).mean(axis=(1, 3))
        return [ycc[..., 0], chroma[..., 0], chroma[..., 1]]

    sse = count = 0.0
    for x, y in zip(planes(a), planes(b)):
        sse += float(np.sum(np.square(x - y)))
        count += x.size
    return psnr_from_mse(sse / count, 255.0)


PSNR_SPACES = {"rgb": psnr, "yuv420": psnr_yuv420}  # what --psnr-space / compress_to(psnr_of=) name


def ms_ssim_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two HxWx3 uint8 arrays (5 scales); NaN if the short side is 160 px or less."""
    if min(a.shape[:2]) < MSSSIM_MIN_SIDE:
        return math.nan
    import torch
    from pytorch_msssim import ms_ssim

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)

    # One thread: on a busy 2-core machine torch's thread pool makes this 10x slower, and
    # each call is small anyway. The caller's setting (aecodec's) is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return float(ms_ssim(tensor(a), tensor(b), data_range=255))
    finally:
        torch.set_num_threads(threads)
