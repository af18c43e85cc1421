"""1. Machine peak: a large fp32 matmul and a 96-channel 3x3 convolution (channels-last
and NCHW), GFLOP/s, side by side in one run. The channels-last conv is the reference
("conv peak") the model figures are fractions of (bench_inference measures it again in
its own run)."""
from __future__ import annotations

import torch
from torch import nn

from common import Report, header, measure, parse_args


def matmul_case(n: int):
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)

    def run():
        torch.mm(a, b, out=out)

    return run, 2 * n**3


def conv_case(channels: int = 96, height: int = 180, width: int = 320, batch: int = 1,
              channels_last: bool = True):
    """A 3x3 conv C->C with padding, as in the model's HeavyBlocks; (callable, FLOPs per call)."""
    conv = nn.Conv2d(channels, channels, 3, padding=1).eval()
    x = torch.randn(batch, channels, height, width)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            conv(x)

    return run, 2 * channels * channels * 9 * height * width * batch


def main(argv=None) -> None:
    args = parse_args(__doc__, argv)
    report = Report("peak", "full" if args.full else "quick")
    header("peak", args.full)
    n = 4096 if args.full else 2048
    repeats = 9 if args.full else 5
    cases = {
        f"matmul {n}x{n} fp32": matmul_case(n),
        "conv3x3 96ch 180x320 channels-last": conv_case(),
        "conv3x3 96ch 180x320 NCHW": conv_case(channels_last=False),
        "conv3x3 96ch 64x64 x4 channels-last": conv_case(height=64, width=64, batch=4),
    }
    if args.full:
        cases["conv3x3 32ch 180x320 channels-last"] = conv_case(channels=32)
        cases["conv3x3 96ch 360x640 channels-last"] = conv_case(height=360, width=640)
    timings = measure({k: fn for k, (fn, _) in cases.items()}, repeats=repeats, warmup=2)
    gflops = {k: cases[k][1] / timings[k].median / 1e9 for k in cases}
    conv_peak = gflops["conv3x3 96ch 180x320 channels-last"]
    matmul = gflops[f"matmul {n}x{n} fp32"]
    for name, value in gflops.items():
        if name.startswith("matmul"):
            report.add(name, value, "GFLOP/s", "conv peak (channels-last)", value / conv_peak)
        elif name == "conv3x3 96ch 180x320 channels-last":
            report.add(name + " = conv peak", value, "GFLOP/s", "matmul", value / matmul)
        else:
            report.add(name, value, "GFLOP/s", "conv peak (channels-last)", value / conv_peak)
    report.details = {"timings": {k: t.to_dict() for k, t in timings.items()},
                      "flops": {k: c[1] for k, c in cases.items()}}
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
