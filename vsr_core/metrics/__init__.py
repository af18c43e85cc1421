"""Image quality metrics (PSNR / SSIM) following BasicSR conventions, and the gain over bicubic.

The temporal metrics (tOF, flicker) are in ``vsr_core.metrics.temporal``; import them from there
(it loads OpenCV, which importing this package alone does not)."""

from vsr_core.metrics.gain import format_gain, gain_over_bicubic
from vsr_core.metrics.psnr_ssim import psnr, rgb_to_y, ssim

__all__ = ["psnr", "ssim", "rgb_to_y", "gain_over_bicubic", "format_gain"]
