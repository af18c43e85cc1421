"""Image quality metrics (PSNR / SSIM) following BasicSR conventions."""

from vsr_core.metrics.psnr_ssim import psnr, rgb_to_y, ssim

__all__ = ["psnr", "ssim", "rgb_to_y"]
