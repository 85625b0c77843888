"""Range checks of every numeric option, run at parse time (issue #15 item 9), so a bad value
stops the run before anything is built. Floats must also be finite (``--time_to_run`` may be
``inf``: no budget). Options a parser lacks are skipped: one table serves every script.
"""
from __future__ import annotations

import math

from utils.errors import OptionError

__all__ = ["RULES", "check_ranges"]

INT_MAX = 2 ** 32 - 1   # every count, and the seed: larger ones break itertools and torch

# option -> (range, as the error shows it: ">= lo", "> lo" or "in [lo, hi]" with "(" / ")" for
# open ends; what the range means)
RULES: dict[str, tuple[str, str]] = {
    "batch_size": (">= 1", "samples per batch"),
    "eval_batch_size": (">= 1", "samples per in-training evaluation batch"),
    "num_epochs": (">= 1", "0 epochs would train nothing"),
    "max_steps": (">= 0", "0 = no step limit"),
    "num_workers": (">= 0", "0 = load data in the main process"),
    "seed": (f"in [0, {INT_MAX}]", "numpy seeds are 32-bit unsigned"),
    "test_val_step": (">= -1", "-1 = no test-time optimisation, 0 = step 0 only"),
    "inner_step": (">= 0", "0 = no inner step"),
    "max_nonfinite": (">= 1", "consecutive non-finite losses before stopping"),
    "summary_steps": (">= 1", "iterations between TensorBoard scalars"),
    "checkpoint_steps": (">= 0", "0 = checkpoints only at epoch ends"),
    "test_epochs": (">= 1", "epochs between evaluations"),
    "save_epochs": (">= 1", "epochs between saved checkpoints"),
    "test_start_epoch": (">= 0", "first epoch that may test / save"),
    "eval_max_batches": (">= 0", "0 = every batch"),
    "max_batches": (">= 0", "0 = every batch"),
    "log_freq": (">= 0", "0 = no progress lines"),
    "viz_max": (">= -1", "-1 = every sample, 0 = the first of each batch"),
    "tto_chunk": (">= 0", "0 = automatic"),
    "tto_workers": (">= 0", "0 = automatic"),
    "inner_lr": (">= 0", "a learning rate"),
    "outer_lr": ("> 0", "a learning rate; 0 would train nothing"),
    "aux_lr": (">= 0", "a learning rate"),
    "after_innerlr": (">= 0", "a learning rate"),
    "beta1": ("in [0, 1)", "an Adam coefficient"),
    "beta2": ("in [0, 1)", "an Adam coefficient"),
    "eps_adam": ("> 0", "Adam's epsilon"),
    "adapt_tol": (">= 0", "a loss change"),
    "rot_factor": (">= 0", "degrees"),
    "noise_factor": ("in [0, 1]", "pixel noise U[1-n, 1+n]"),
    "scale_factor": ("in [0, 1)", "scale noise, clipped to 1 +- s"),
    **dict.fromkeys(("shape_loss_weight", "keypoint_loss_weight", "pose_loss_weight",
                     "beta_loss_weight", "openpose_train_weight", "gt_train_weight"),
                    (">= 0", "a loss weight")),
    "time_to_run": ("> 0", "seconds; inf = no budget"),
    "dist_timeout": ("> 0", "seconds"),
    "crop_scale": ("in (0, 4]", "a factor of the released crop size; 4 is a 1024x768 crop"),
    "focal_length": (">= 1", "pixels"),
}


def _within(value: float, text: str) -> bool:
    """Whether ``value`` lies in the range ``text`` (a :data:`RULES` range; integer bounds)."""
    if not text.startswith("in "):
        op, bound = text.split()
        return value > int(bound) if op == ">" else value >= int(bound)
    lo, hi = (int(b) for b in text[4:-1].split(", "))
    return (lo < value if text[3] == "(" else lo <= value) and \
        (value < hi if text[-1] == ")" else value <= hi)


def check_ranges(options) -> None:
    """Raise :class:`OptionError` (one line: the option, its range, the value, what the range
    means) for the first numeric option outside its range or an integer above :data:`INT_MAX`."""
    for name, (text, meaning) in RULES.items():
        value = getattr(options, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        finite = (isinstance(value, int) or math.isfinite(value)   # (an int may exceed floats)
                  or (name == "time_to_run" and value == math.inf))
        if not finite or not _within(value, text):
            raise OptionError(f"--{name} must be {text}{'' if finite else ' and finite'}, got "
                              f"{value!r} ({meaning}). Pass a value in that range")
        if isinstance(value, int) and value > INT_MAX:
            raise OptionError(f"--{name} must be at most {INT_MAX}, got {value} ({meaning}). "
                              f"Pass a smaller value")
