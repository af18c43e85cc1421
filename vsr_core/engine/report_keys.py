"""The names of what a run reports at each validation: Tune's result rows, Ray Train's reports and the
``metrics`` of a sweep's ``best.json``.

The one owner of these names. The reporting side (``engine.reporting``) writes them and every reader
(``tune/search.py``: the searched metric, ASHA's time, the status table, the summary; ``serve/demo.py``:
the gains in ``best.json``) uses these constants, so a renamed key changes here only.
"""
from __future__ import annotations

# --- the run's state -------------------------------------------------------------------------------------
STEP = "step"  # optimizer steps done: ASHA's time attribute
LR = "lr"
TRAINING_PHASE = "training_phase"  # "pretrain" or "finetune"
WORKERS = "workers"  # data-parallel workers training the run (1: one process)
NODE_ID = "node_id"  # the Ray node the run (rank 0) trained on
SKIPPED_STEPS = "skipped_steps"  # steps with a NaN/Inf loss, not applied
CONVERGENCE = "convergence"  # engine.convergence's status text
COLD_LAYERS = "cold_layers"  # layers that barely change their input (engine.health)

# --- the last training step --------------------------------------------------------------------------------
LOSS_L1 = "loss_l1"
LOSS_PERCEPTUAL = "loss_perceptual"
LOSS_TOTAL = "loss_total"
SAMPLES_PER_S = "samples_per_s"

# --- the validation ----------------------------------------------------------------------------------------
GAIN = "gain"  # dB over bicubic on the validation set: the number a sweep maximises
PSNR = "psnr"  # Y-PSNR of the model on the validation set
SSIM = "ssim"
VAL_L1 = "val_l1"
BICUBIC_PSNR = "bicubic_psnr"  # bicubic's Y-PSNR on the same items
# temporal consistency (vsr_core.metrics.temporal) of a few consecutive validation frames: reported, not ranked
TOF = "tof"  # HR pixels; lower is better
FLICKER = "flicker"  # Y gray levels; lower is better
BICUBIC_TOF = "bicubic_tof"  # bicubic's on the same frames
BICUBIC_FLICKER = "bicubic_flicker"

# --- a run that diverged (a result, not an error) ----------------------------------------------------------
DIVERGED = "diverged"
ERROR = "error"

# --- families of keys: a prefix + a name -------------------------------------------------------------------
CLIP_GAIN_PREFIX = "gain/"  # gain/<validation clip>
LAYER_PREFIX = "layer/"  # layer/<layer name>: its activity
TEMPORAL_WEIGHT_PREFIX = "temporal_weight/"  # temporal_weight/<frame>: the model's weight of that frame


def clip_gain(clip: str) -> str:
    return CLIP_GAIN_PREFIX + clip


def layer(name: str) -> str:
    return LAYER_PREFIX + name


def temporal_weight(frame: str) -> str:
    return TEMPORAL_WEIGHT_PREFIX + frame
