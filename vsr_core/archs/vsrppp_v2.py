"""VSR+++ v2: 3x video super-resolution from a window of 5 frames.

Data flow (C = channels, N = HeavyBlocks per branch)::

    frames [B,5,3,H,W] in [0,1]
      -> shared feature extraction (conv3x3 3->C, LeakyReLU)  F0..F4
      -> backward branch: conv1x1([F3,F4]) -> N HeavyBlocks
      -> forward  branch: conv1x1([F0,F1]) -> N HeavyBlocks
      -> w = softmax(temporal_logits); weighted = backward*w0 + F2*w1 + forward*w2
      -> fusion conv3x3 + LeakyReLU -> conv3x3 C->27 -> PixelShuffle(3)  (residual)
      -> + bilinear 3x upsampling of the center frame F2 ("anchor")
    output [B,3,3H,3W]

How it runs (``reconstruct_subpixels``, ``archs.subpixels``): the last conv's 27 output
channels are taken in (i, j, colour) order instead of PixelShuffle's (colour, i, j) (its weights
permuted on the fly, so checkpoints are unchanged), the anchor is added to them at LR resolution
as the 27 sub-pixel channels of the bilinear upsampling (a fixed 3x3 filter, fp32), and the
shuffle into [B,3,3H,3W] moves runs of 9 values. The same sum within float rounding, without
the interpolation and the add over the 3x frame. A stream stops before the shuffle, converts the
27 channels to uint8 and shuffles bytes (``frames.subpixels_to_frames``).

HeavyBlock (EDSR-style residual block, no batch norm)::

    y = x + conv3x3(relu(conv3x3(x)))

Layer activity of a block is the fraction of its hidden units (the ReLU output)
that are > 0 on the last forward pass. It is a by-product of the forward pass
(one reduction per block, no extra forward) and can be switched off.

The network is fully convolutional with padding, so any H, W >= 1 works.
The output is *not* clamped: training needs the gradient everywhere;
the inference path clamps to [0,1].

Speed: activations run in channels-last (NHWC) memory (``memory_format``), the layout
oneDNN (CPU) and cuDNN (tensor cores) convolve fastest: a 96-channel 3x3 conv at
180x320 on a 2-core AVX-512 CPU measured 1.3x faster than in NCHW, 1.7x on a busy
machine (see benchmarks/README.md). ReLU and the residual add work in place on fresh
conv outputs (autograd-safe: a conv does not keep its output for the backward pass).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vsr_core.archs.subpixels import ORDER, SCALE, bilinear_subpixels, shuffle_subpixels

NUM_FRAMES = 5
CENTER = NUM_FRAMES // 2


@dataclass(frozen=True)
class ModelSpec:
    channels: int
    blocks_per_branch: int

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ModelSpec] = {
    "full": ModelSpec(channels=96, blocks_per_branch=15),  # the seed's model, ~5.1M params
    "small": ModelSpec(channels=32, blocks_per_branch=4),  # trains in minutes on a laptop CPU
    # Real time at 320x180 LR on 2 CPU cores (AVX2, fp32, batches of 4 windows): 48 frames/s where 16 ch
    # with 2+2 blocks made 37 and 12 ch 2+2 38; fewer than 16 channels buy little (benchmarks/README.md)
    "realtime": ModelSpec(channels=16, blocks_per_branch=1),
    "tiny": ModelSpec(channels=8, blocks_per_branch=1),  # for tests
}


def model_spec(preset: str) -> ModelSpec:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; allowed: {sorted(PRESETS)}")
    return PRESETS[preset]


class HeavyBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.track_activity = True
        self.last_activity: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.conv1(x), inplace=True)  # in place on the conv's fresh output
        if self.track_activity:
            # ReLU output > 0 <=> != 0 (a NaN unit counts as active); count_nonzero is one pass
            # over the tensor, (hidden > 0).float().mean() three.
            self.last_activity = torch.count_nonzero(hidden.detach()) / hidden.numel()
        return self.conv2(hidden).add_(x)  # = x + conv2(hidden), without another full-size tensor


class VSRPPPv2(nn.Module):
    #: Memory layout of the activations (the weights stay as they are, so checkpoints and
    #: optimizers are unaffected). torch.contiguous_format gives the plain NCHW path.
    memory_format: torch.memory_format = torch.channels_last

    def __init__(self, channels: int = 96, blocks_per_branch: int = 15):
        super().__init__()
        self.spec = ModelSpec(channels, blocks_per_branch)
        c = channels
        self.feature_extract = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.backward_fuse = nn.Conv2d(2 * c, c, 1)
        self.forward_fuse = nn.Conv2d(2 * c, c, 1)
        self.backward_blocks = nn.Sequential(*[HeavyBlock(c) for _ in range(blocks_per_branch)])
        self.forward_blocks = nn.Sequential(*[HeavyBlock(c) for _ in range(blocks_per_branch)])
        # Zero logits -> equal weights 1/3 at start; softmax keeps them positive and summing to 1.
        self.temporal_logits = nn.Parameter(torch.zeros(3))
        self.fusion = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.upsample = nn.Sequential(nn.Conv2d(c, 3 * SCALE * SCALE, 3, padding=1), nn.PixelShuffle(SCALE))
        # Start as exactly the bilinear anchor: the network then learns only a correction,
        # and an untrained model is a sane upscaler rather than noise.
        nn.init.zeros_(self.upsample[0].weight)
        nn.init.zeros_(self.upsample[0].bias)

    @classmethod
    def from_preset(cls, preset: str) -> "VSRPPPv2":
        spec = model_spec(preset)
        return cls(spec.channels, spec.blocks_per_branch)

    # --- forward -------------------------------------------------------------------
    def extract_features(self, frames: torch.Tensor) -> torch.Tensor:
        """[B,T,3,H,W] -> [B,T,C,H,W]. Per-frame, so features can be reused across windows."""
        b, t, _, h, w = frames.shape
        feats = self.feature_extract(frames.reshape(b * t, 3, h, w).contiguous(memory_format=self.memory_format))
        return feats.reshape(b, t, -1, h, w)  # a view: the 4-D layout (e.g. channels-last) is kept

    def reconstruct(self, feats: torch.Tensor, center_frame: torch.Tensor) -> torch.Tensor:
        """Window features [B,5,C,H,W] + center frame [B,3,H,W] -> [B,3,3H,3W]."""
        return self.reconstruct_frames(feats.unbind(1), center_frame)

    def reconstruct_frames(self, feats: Sequence[torch.Tensor], center_frame: torch.Tensor) -> torch.Tensor:
        """``reconstruct`` with the window's 5 frame features as separate [B,C,H,W] tensors
        (e.g. per-frame features cached by a stream and reused by the 5 windows that read them)."""
        # [B,3H,3W,3] viewed as [B,3,3H,3W]: channels-last, as the convs' outputs
        return shuffle_subpixels(self.reconstruct_subpixels(feats, center_frame)).permute(0, 3, 1, 2)

    def reconstruct_subpixels(self, feats: Sequence[torch.Tensor], center_frame: torch.Tensor) -> torch.Tensor:
        """``reconstruct_frames`` before its shuffle: [B,27,H,W] (fp32), channel ``(i*3 + j)*3 + c``
        is colour c of the output pixel (3y+i, 3x+j) (``archs.subpixels``)."""
        if len(feats) != NUM_FRAMES:
            raise ValueError(f"expected the features of {NUM_FRAMES} frames, got {len(feats)}")
        fmt = self.memory_format  # the conv inputs; .contiguous is a no-op if they already are
        f0, f1, f3, f4 = (feats[i].contiguous(memory_format=fmt) for i in (0, 1, 3, 4))
        backward = self.backward_blocks(_fuse_pair(self.backward_fuse, f3, f4))
        forward = self.forward_blocks(_fuse_pair(self.forward_fuse, f0, f1))
        w = torch.softmax(self.temporal_logits, dim=0)
        if torch.is_grad_enabled():
            weighted = backward * w[0] + feats[CENTER] * w[1] + forward * w[2]
        else:  # the same sum in place in a fresh buffer: no temporaries (nothing is kept for autograd)
            weighted = backward.mul_(w[0]).addcmul_(feats[CENTER], w[1]).addcmul_(forward, w[2])
        last = self.upsample[0]  # (upsample[1], its PixelShuffle, is replaced by shuffle_subpixels)
        order = torch.tensor(ORDER, device=last.weight.device)
        residual = F.conv2d(self.fusion(weighted), last.weight[order], last.bias[order], padding=1)
        return bilinear_subpixels(center_frame, fmt).add_(residual)  # into the fresh fp32 anchor: no temporary

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[1] != NUM_FRAMES or frames.shape[2] != 3:
            raise ValueError(f"expected frames of shape [B,{NUM_FRAMES},3,H,W], got {list(frames.shape)}")
        return self.reconstruct_frames(self._frame_features(frames), frames[:, CENTER])

    def _frame_features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """``extract_features(frames).unbind(1)`` with the frames taken position by position, so that
        each of the 5 results is one dense [B,C,H,W] block (a window-major batch would leave every
        one strided, and the model would copy 4 of them again)."""
        b, t, _, h, w = frames.shape
        by_position = frames.transpose(0, 1).reshape(t * b, 3, h, w).contiguous(memory_format=self.memory_format)
        return list(self.feature_extract(by_position).reshape(t, b, -1, h, w).unbind(0))

    # --- observability ---------------------------------------------------------------
    @property
    def heavy_blocks(self) -> list[HeavyBlock]:
        """Blocks in display order: backward branch (Block_00..) then forward branch."""
        return list(self.backward_blocks) + list(self.forward_blocks)

    def set_activity_tracking(self, enabled: bool) -> None:
        for block in self.heavy_blocks:
            block.track_activity = enabled
            block.last_activity = None

    @contextlib.contextmanager
    def activity_tracking_paused(self) -> Iterator[None]:
        """No activity bookkeeping inside (inference: one pass over every block's hidden tensor
        less), the previous setting and the last recorded values back afterwards."""
        saved = [block.track_activity for block in self.heavy_blocks]
        for block in self.heavy_blocks:
            block.track_activity = False
        try:
            yield
        finally:
            for block, enabled in zip(self.heavy_blocks, saved):
                block.track_activity = enabled

    def layer_activity(self) -> list[float]:
        """Activity in [0,1] of every HeavyBlock on the last forward pass (NaN if not tracked)."""
        values = [b.last_activity for b in self.heavy_blocks]
        if any(v is None for v in values):
            return [float("nan")] * len(values)
        return torch.stack(values).tolist()  # one device sync for all blocks

    @property
    def frame_stats(self) -> dict[str, float]:
        w = torch.softmax(self.temporal_logits.detach().float(), dim=0).tolist()
        return {"backward": w[0], "center": w[1], "forward": w[2]}


def _fuse_pair(fuse: nn.Conv2d, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``fuse(cat([first, second], dim=1))`` for a 1x1 conv, as two convs on the halves of its
    weight: no concatenated copy (slow in channels-last), the same arithmetic."""
    c = first.shape[1]
    # contiguous halves of the (small, C x 2C) weight; autograd flows through the copies
    out = F.conv2d(second, fuse.weight[:, c:].contiguous(), fuse.bias)
    return out.add_(F.conv2d(first, fuse.weight[:, :c].contiguous()))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
