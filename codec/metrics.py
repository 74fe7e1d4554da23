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


# --- colour: CIE76 colour error in CIELAB (D65), on a colour checker chart ----------------------

# The 24 patches of the X-Rite ColorChecker Classic as 8-bit sRGB (the values commonly published
# for it, D65), row by row: skin, sky, foliage...; the last row the greys, white to black.
COLOR_CHECKER = (
    (115, 82, 68), (194, 150, 130), (98, 122, 157), (87, 108, 67), (133, 128, 177), (103, 189, 170),
    (214, 126, 44), (80, 91, 166), (193, 90, 99), (94, 60, 108), (157, 188, 64), (224, 163, 46),
    (56, 61, 150), (70, 148, 73), (175, 54, 60), (231, 199, 31), (187, 86, 149), (8, 133, 161),
    (243, 243, 242), (200, 200, 200), (160, 160, 160), (122, 122, 121), (85, 85, 85), (52, 52, 52),
)
COLOR_CHECKER_NAMES = (
    "dark skin", "light skin", "blue sky", "foliage", "blue flower", "bluish green", "orange", "purplish blue",
    "moderate red", "purple", "yellow green", "orange yellow", "blue", "green", "red", "yellow", "magenta", "cyan",
    "white", "neutral 8", "neutral 6.5", "neutral 5", "neutral 3.5", "black",
)


def srgb_to_lab(rgb) -> np.ndarray:
    """8-bit sRGB (..., 3) -> CIELAB (..., 3), D65 white (IEC 61966-2-1, CIE 15)."""
    c = np.asarray(rgb, np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def delta_e76(a, b) -> np.ndarray:
    """CIE76 colour difference of 8-bit sRGB colours (..., 3): Euclidean distance in CIELAB;
    about 2.3 is a just noticeable difference."""
    return np.linalg.norm(srgb_to_lab(a) - srgb_to_lab(b), axis=-1)


def color_checker_chart(patch: int = 64) -> np.ndarray:
    """The chart as an 8-bit RGB image, 6 x 4 patches of ``patch`` pixels."""
    colours = np.asarray(COLOR_CHECKER, np.uint8).reshape(4, 6, 3)
    return np.repeat(np.repeat(colours, patch, axis=0), patch, axis=1)


def chart_errors(decoded, patch: int = 64) -> np.ndarray:
    """CIE76 error of each patch of a decoded chart: the mean colour of its centre half against
    the patch's colour (the edges between patches are the codec's to blur)."""
    d = np.asarray(decoded, np.float64)
    q = patch // 4
    centres = [d[r * patch + q : (r + 1) * patch - q, c * patch + q : (c + 1) * patch - q].reshape(-1, 3).mean(0)
               for r in range(4) for c in range(6)]
    return delta_e76(np.asarray(COLOR_CHECKER, np.float64), np.asarray(centres))
