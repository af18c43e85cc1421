from vsr_core.archs.vsrppp_v2 import (
    CENTER,
    NUM_FRAMES,
    PRESETS,
    SCALE,
    HeavyBlock,
    ModelSpec,
    VSRPPPv2,
    count_parameters,
    model_spec,
)

__all__ = [
    "CENTER",
    "NUM_FRAMES",
    "PRESETS",
    "SCALE",
    "HeavyBlock",
    "ModelSpec",
    "VSRPPPv2",
    "count_parameters",
    "model_spec",
]
