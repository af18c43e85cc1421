"""PSNR and SSIM for image/video super-resolution, following BasicSR conventions.

Conventions shared by every function in this module:

* Images are numpy arrays in HxWxC (or HxW) layout with values in [0, 255],
  either ``uint8`` or float. They are **RGB** (not BGR, unlike BasicSR, which
  reads images with OpenCV); ``rgb_to_y`` uses the matching coefficient order.
* All arithmetic is done in float64. Inputs are never rounded or clipped.
* ``crop_border`` removes that many pixels from *each* side (top, bottom, left,
  right) before the metric is computed, as is customary for SR evaluation
  (typically ``crop_border = scale``).
* ``y_channel=True`` evaluates on the BT.601 luma (Y of YCbCr, range [16, 235])
  instead of on the RGB channels, matching BasicSR's ``test_y_channel``.

The SSIM is the MATLAB/BasicSR variant: 11x11 Gaussian window with sigma 1.5,
C1 = (0.01*255)^2, C2 = (0.03*255)^2, statistics computed only over the
"valid" region (no padding; the output map is (H-10)x(W-10)), and for
multichannel images the mean of the per-channel SSIMs. The data range is
fixed at 255.
"""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "ssim", "rgb_to_y"]

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * 255.0) ** 2
_SSIM_C2 = (0.03 * 255.0) ** 2


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Return the ITU-R BT.601 luma of an HxWx3 RGB image in [0, 255].

    ``Y = 16 + (65.481*R + 128.553*G + 24.966*B) / 255`` -- the same as
    MATLAB's ``rgb2ycbcr`` / BasicSR's ``rgb2ycbcr(y_only=True)`` for inputs on
    a [0, 255] scale, but without rounding. Output is HxW float64 in [16, 235].
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 image, got shape {img.shape}")
    img = img.astype(np.float64)
    return 16.0 + img @ np.array([65.481, 128.553, 24.966]) / 255.0


def _prepare(img1, img2, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes, crop borders, optionally convert to Y; return float64 HxWxC."""
    img1 = np.asarray(img1)
    img2 = np.asarray(img2)
    if img1.shape != img2.shape:
        raise ValueError(f"Image shapes differ: {img1.shape} vs {img2.shape}")
    if img1.ndim not in (2, 3):
        raise ValueError(f"Expected HxW or HxWxC images, got shape {img1.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border > 0:
        img1 = img1[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
    if img1.shape[0] == 0 or img1.shape[1] == 0:
        raise ValueError(f"crop_border={crop_border} leaves an empty image")
    if y_channel:
        img1, img2 = rgb_to_y(img1), rgb_to_y(img2)
    img1 = img1.astype(np.float64)
    img2 = img2.astype(np.float64)
    if img1.ndim == 2:
        img1, img2 = img1[..., None], img2[..., None]
    return img1, img2


def psnr(
    img1: np.ndarray,
    img2: np.ndarray,
    crop_border: int = 0,
    y_channel: bool = False,
    max_value: float = 255.0,
) -> float:
    """Peak signal-to-noise ratio in dB: ``10*log10(max_value^2 / MSE)``.

    The MSE is averaged over all pixels *and* channels (BasicSR convention).
    Returns ``float('inf')`` for identical images. Raises ``ValueError`` if
    the shapes differ. See the module docstring for input conventions.
    """
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(max_value**2 / mse))


def _gaussian_kernel_1d(size: int = _SSIM_WIN, sigma: float = _SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian, identical to ``cv2.getGaussianKernel(size, sigma)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    k = np.exp(-(x**2) / (2.0 * sigma**2))
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 2-D filter of HxW ``x`` with ``outer(k, k)``, 'valid' region only.

    Equivalent to BasicSR's ``cv2.filter2D(x, -1, window)[5:-5, 5:-5]`` for an
    11-tap kernel: the border-mode of filter2D never affects the kept pixels.
    """
    win = np.lib.stride_tricks.sliding_window_view
    x = win(x, k.size, axis=0) @ k  # (H-10, W)
    return win(x, k.size, axis=1) @ k  # (H-10, W-10)


def _ssim_single(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two HxW float64 images (BasicSR ``_ssim``)."""
    k = _gaussian_kernel_1d()
    mu1 = _filter_valid(a, k)
    mu2 = _filter_valid(b, k)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _filter_valid(a * a, k) - mu1_sq
    sigma2_sq = _filter_valid(b * b, k) - mu2_sq
    sigma12 = _filter_valid(a * b, k) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + _SSIM_C1) * (2 * sigma12 + _SSIM_C2)) / (
        (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    )
    return float(ssim_map.mean())


def ssim(
    img1: np.ndarray,
    img2: np.ndarray,
    crop_border: int = 0,
    y_channel: bool = False,
) -> float:
    """Structural similarity (MATLAB / BasicSR variant), data range 255.

    11x11 Gaussian window (sigma 1.5), 'valid' filtering, C1 = (0.01*255)^2,
    C2 = (0.03*255)^2; multichannel images give the mean of per-channel SSIMs.
    After cropping, the image must be at least 11x11. Raises ``ValueError`` if
    the shapes differ. See the module docstring for input conventions.
    """
    a, b = _prepare(img1, img2, crop_border, y_channel)
    if a.shape[0] < _SSIM_WIN or a.shape[1] < _SSIM_WIN:
        raise ValueError(
            f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN} after cropping, "
            f"got {a.shape[0]}x{a.shape[1]}"
        )
    return float(np.mean([_ssim_single(a[..., c], b[..., c]) for c in range(a.shape[2])]))
