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

HeavyBlock (EDSR-style residual block, no batch norm)::

    y = x + conv3x3(relu(conv3x3(x)))

Layer activity of a block is the fraction of its hidden units (the ReLU output)
that are > 0 on the last forward pass. It is a by-product of the forward pass
(one reduction per block, no extra forward) and can be switched off.

The network is fully convolutional with padding, so any H, W >= 1 works.
The output is *not* clamped: training needs the gradient everywhere;
the inference path clamps to [0,1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCALE = 3
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
        hidden = F.relu(self.conv1(x))
        if self.track_activity:
            self.last_activity = (hidden.detach() > 0).float().mean()
        return x + self.conv2(hidden)


class VSRPPPv2(nn.Module):
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
        feats = self.feature_extract(frames.reshape(b * t, 3, h, w))
        return feats.reshape(b, t, -1, h, w)

    def reconstruct(self, feats: torch.Tensor, center_frame: torch.Tensor) -> torch.Tensor:
        """Window features [B,5,C,H,W] + center frame [B,3,H,W] -> [B,3,3H,3W]."""
        backward = self.backward_blocks(self.backward_fuse(torch.cat([feats[:, 3], feats[:, 4]], dim=1)))
        forward = self.forward_blocks(self.forward_fuse(torch.cat([feats[:, 0], feats[:, 1]], dim=1)))
        w = torch.softmax(self.temporal_logits, dim=0)
        weighted = backward * w[0] + feats[:, CENTER] * w[1] + forward * w[2]
        residual = self.upsample(self.fusion(weighted))
        anchor = F.interpolate(center_frame, scale_factor=SCALE, mode="bilinear", align_corners=False)
        return residual + anchor

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[1] != NUM_FRAMES or frames.shape[2] != 3:
            raise ValueError(f"expected frames of shape [B,{NUM_FRAMES},3,H,W], got {list(frames.shape)}")
        return self.reconstruct(self.extract_features(frames), frames[:, CENTER])

    # --- observability ---------------------------------------------------------------
    @property
    def heavy_blocks(self) -> list[HeavyBlock]:
        """Blocks in display order: backward branch (Block_00..) then forward branch."""
        return list(self.backward_blocks) + list(self.forward_blocks)

    def set_activity_tracking(self, enabled: bool) -> None:
        for block in self.heavy_blocks:
            block.track_activity = enabled
            block.last_activity = None

    def layer_activity(self) -> list[float]:
        """Activity in [0,1] of every HeavyBlock on the last forward pass (NaN if not tracked)."""
        values = [b.last_activity for b in self.heavy_blocks]
        if any(v is None for v in values):
            return [float("nan")] * len(values)
        return torch.stack(values).tolist()  # one device sync for all blocks

    @staticmethod
    def block_names(count: int) -> list[str]:
        return [f"Block_{i:02d}" for i in range(count)]

    @property
    def frame_stats(self) -> dict[str, float]:
        w = torch.softmax(self.temporal_logits.detach().float(), dim=0).tolist()
        return {"backward": w[0], "center": w[1], "forward": w[2]}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
