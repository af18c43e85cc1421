"""Tests for vsr_core.metrics (PSNR / SSIM / rgb_to_y, BasicSR conventions)."""

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vsr_core.metrics import psnr, rgb_to_y, ssim


def _rand_pair(shape, noise_std, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a + rng.normal(0.0, noise_std, shape), 0, 255).astype(np.uint8)
    return a, b


def _skimage_ssim(a, b, **kw):
    return structural_similarity(
        a,
        b,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        **kw,
    )


# ----------------------------------------------------------------- rgb_to_y
def test_rgb_to_y_white_black_and_dtype():
    white = np.full((2, 3, 3), 255, dtype=np.uint8)
    black = np.zeros((2, 3, 3), dtype=np.uint8)
    y_white, y_black = rgb_to_y(white), rgb_to_y(black)
    assert y_white.shape == (2, 3) and y_white.dtype == np.float64
    np.testing.assert_allclose(y_white, 235.0, atol=1e-9)
    np.testing.assert_allclose(y_black, 16.0, atol=1e-12)


def test_rgb_to_y_channel_order_is_rgb():
    red = np.zeros((1, 1, 3))
    red[..., 0] = 255
    blue = np.zeros((1, 1, 3))
    blue[..., 2] = 255
    assert rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    assert rgb_to_y(blue)[0, 0] == pytest.approx(16 + 24.966)


def test_rgb_to_y_rejects_non_rgb():
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4)))


# --------------------------------------------------------------------- psnr
def test_psnr_hand_computed():
    a = np.zeros((8, 8, 3), dtype=np.uint8)
    b = np.full((8, 8, 3), 10, dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 10))
    # uint8 inputs must not wrap around: b - a and a - b give the same PSNR
    assert psnr(b, a) == pytest.approx(psnr(a, b))
    assert psnr(a, b, max_value=1.0) == pytest.approx(20 * math.log10(1 / 10))


def test_psnr_identical_is_inf():
    a, _ = _rand_pair((16, 16, 3), 5)
    assert psnr(a, a.copy()) == float("inf")


def test_psnr_crop_border_excludes_border():
    a = np.zeros((10, 10, 3), dtype=np.float64)
    b = np.full((10, 10, 3), 200.0)
    b[2:-2, 2:-2] = 10.0  # interior differs by 10, border by 200
    expected = 20 * math.log10(255 / 10)
    assert psnr(a, b, crop_border=2) == pytest.approx(expected)
    assert psnr(a, b) < expected - 10  # the border does matter when not cropped
    # crop of 1 still includes part of the border
    assert psnr(a, b, crop_border=1) < expected - 5


@pytest.mark.parametrize("shape", [(32, 24, 3), (20, 17), (15, 15, 1)])
def test_psnr_matches_skimage(shape):
    a, b = _rand_pair(shape, 12, seed=3)
    ref = peak_signal_noise_ratio(a, b, data_range=255)
    assert psnr(a, b) == pytest.approx(ref, abs=1e-10)
    assert psnr(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(ref, abs=1e-10)


def test_psnr_y_channel_equals_psnr_of_y_images():
    a, b = _rand_pair((20, 20, 3), 10, seed=4)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    expected = peak_signal_noise_ratio(ya, yb, data_range=255)
    assert psnr(a, b, y_channel=True) == pytest.approx(expected, abs=1e-10)
    assert psnr(a, b, y_channel=True) != pytest.approx(psnr(a, b), abs=1e-3)
    # crop happens on the RGB image before conversion
    expected_c = peak_signal_noise_ratio(ya[3:-3, 3:-3], yb[3:-3, 3:-3], data_range=255)
    assert psnr(a, b, crop_border=3, y_channel=True) == pytest.approx(expected_c, abs=1e-10)


def test_psnr_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(8, 9, 3\)"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))


# --------------------------------------------------------------------- ssim
# skimage's structural_similarity with gaussian_weights=True, sigma=1.5 uses
# truncate=3.5 -> an 11-tap Gaussian identical to cv2.getGaussianKernel(11, 1.5).
# It filters with reflect padding and then crops (win_size-1)//2 = 5 pixels from
# each side of the SSIM map before averaging, i.e. it averages exactly the
# padding-free 'valid' region that BasicSR keeps with [5:-5, 5:-5]. With
# use_sample_covariance=False and data_range=255, C1/C2 also coincide, so the two
# implementations compute the same quantity and only differ by float64 rounding
# in the filter sums (~1e-16 observed). A tolerance of 1e-9 is therefore honest:
# any real convention mismatch (padding, window, constants) is >> 1e-4.
SSIM_TOL = 1e-9


@pytest.mark.parametrize("shape", [(48, 40, 3), (33, 57, 3)])
@pytest.mark.parametrize("noise", [5, 30])
def test_ssim_matches_skimage_rgb(shape, noise):
    a, b = _rand_pair(shape, noise, seed=noise)
    ref = _skimage_ssim(a, b, channel_axis=2)
    assert ssim(a, b) == pytest.approx(ref, abs=SSIM_TOL)


def test_ssim_matches_skimage_gray_float_and_crop():
    a, b = _rand_pair((40, 30), 20, seed=7)
    a, b = a.astype(np.float64), b.astype(np.float64)
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=SSIM_TOL)
    ref_crop = _skimage_ssim(a[4:-4, 4:-4], b[4:-4, 4:-4])
    assert ssim(a, b, crop_border=4) == pytest.approx(ref_crop, abs=SSIM_TOL)
    assert ssim(a, b, crop_border=4) != pytest.approx(ssim(a, b), abs=1e-6)


def test_ssim_y_channel_matches_skimage_on_y():
    a, b = _rand_pair((36, 36, 3), 15, seed=8)
    ref = _skimage_ssim(rgb_to_y(a), rgb_to_y(b))
    assert ssim(a, b, y_channel=True) == pytest.approx(ref, abs=SSIM_TOL)


def test_ssim_11x11_is_single_valid_window():
    # With 'valid' filtering an 11x11 image has exactly one window, so SSIM equals
    # the Gaussian-weighted SSIM formula evaluated once over the whole image
    # (a padded/'same' implementation would average 121 different windows).
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w = np.outer(g, g) / g.sum() ** 2
    a, b = _rand_pair((11, 11), 25, seed=11)
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu1, mu2 = (w * a).sum(), (w * b).sum()
    s1 = (w * a * a).sum() - mu1**2
    s2 = (w * b * b).sum() - mu2**2
    s12 = (w * a * b).sum() - mu1 * mu2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    assert ssim(a, b) == pytest.approx(expected, abs=1e-12)


def test_ssim_identical_is_one():
    a, _ = _rand_pair((32, 32, 3), 1, seed=9)
    assert ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, a.copy(), y_channel=True) == pytest.approx(1.0, abs=1e-12)


def test_ssim_decreases_with_noise():
    rng = np.random.default_rng(10)
    # smooth image so structure is meaningful
    yy, xx = np.mgrid[0:64, 0:64]
    base = 127.5 + 100 * np.sin(xx / 6.0) * np.cos(yy / 9.0)
    base = np.repeat(base[..., None], 3, axis=2)
    noise = rng.normal(size=base.shape)
    values = [ssim(base, np.clip(base + s * noise, 0, 255)) for s in (0, 2, 8, 20, 50)]
    assert values[0] == pytest.approx(1.0)
    assert all(x > y for x, y in zip(values, values[1:])), values


def test_ssim_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(16, 16, 3\).*\(16, 16\)"):
        ssim(np.zeros((16, 16, 3)), np.zeros((16, 16)))


def test_ssim_too_small_raises():
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))
    with pytest.raises(ValueError):
        ssim(np.zeros((20, 20)), np.zeros((20, 20)), crop_border=5)
