"""Range checks of every numeric option, run at parse time (issue #15 item 9), so a bad value
stops the run before anything is built. Floats must also be finite (``--time_to_run`` may be
``inf``: no budget). Options a parser lacks are skipped: one table serves every script.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from utils.errors import OptionError

__all__ = ["RULES", "check_ranges"]


def _n(x: float) -> str:
    """A bound as the user types it: an int exactly (2**32 - 1, not 4.29497e+09)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def _ge(lo: float) -> tuple[str, Callable[[float], bool]]:
    return f">= {_n(lo)}", lambda v: v >= lo


def _gt(lo: float) -> tuple[str, Callable[[float], bool]]:
    return f"> {_n(lo)}", lambda v: v > lo


def _in(lo: float, hi: float, hi_open: bool = False) -> tuple[str, Callable[[float], bool]]:
    return (f"in [{_n(lo)}, {_n(hi)}{')' if hi_open else ']'}",
            lambda v: lo <= v < hi if hi_open else lo <= v <= hi)


# option -> ((range text, test), what the range means)
RULES: dict[str, tuple[tuple[str, Callable[[float], bool]], str]] = {
    "batch_size": (_ge(1), "samples per batch"),
    "eval_batch_size": (_ge(1), "samples per in-training evaluation batch"),
    "num_epochs": (_ge(1), "0 epochs would train nothing"),
    "max_steps": (_ge(0), "0 = no step limit"),
    "num_workers": (_ge(0), "0 = load data in the main process"),
    "seed": (_in(0, 2 ** 32 - 1), "numpy seeds are 32-bit unsigned"),
    "test_val_step": (_ge(-1), "-1 = no test-time optimisation, 0 = step 0 only"),
    "inner_step": (_ge(0), "0 = no inner step"),
    "max_nonfinite": (_ge(1), "consecutive non-finite losses before stopping"),
    "summary_steps": (_ge(1), "iterations between TensorBoard scalars"),
    "checkpoint_steps": (_ge(0), "0 = checkpoints only at epoch ends"),
    "test_epochs": (_ge(1), "epochs between evaluations"),
    "save_epochs": (_ge(1), "epochs between saved checkpoints"),
    "test_start_epoch": (_ge(0), "first epoch that may test / save"),
    "eval_max_batches": (_ge(0), "0 = every batch"),
    "max_batches": (_ge(0), "0 = every batch"),
    "log_freq": (_ge(0), "0 = no progress lines"),
    "viz_max": (_ge(-1), "-1 = every sample, 0 = the first of each batch"),
    "tto_chunk": (_ge(0), "0 = automatic"),
    "tto_workers": (_ge(0), "0 = automatic"),
    "inner_lr": (_ge(0), "a learning rate"),
    "outer_lr": (_gt(0), "a learning rate; 0 would train nothing"),
    "aux_lr": (_ge(0), "a learning rate"),
    "after_innerlr": (_ge(0), "a learning rate"),
    "beta1": (_in(0, 1, hi_open=True), "an Adam coefficient"),
    "beta2": (_in(0, 1, hi_open=True), "an Adam coefficient"),
    "eps_adam": (_gt(0), "Adam's epsilon"),
    "adapt_tol": (_ge(0), "a loss change"),
    "rot_factor": (_ge(0), "degrees"),
    "noise_factor": (_in(0, 1), "pixel noise U[1-n, 1+n]"),
    "scale_factor": (_in(0, 1, hi_open=True), "scale noise, clipped to 1 +- s"),
    "shape_loss_weight": (_ge(0), "a loss weight"),
    "keypoint_loss_weight": (_ge(0), "a loss weight"),
    "pose_loss_weight": (_ge(0), "a loss weight"),
    "beta_loss_weight": (_ge(0), "a loss weight"),
    "openpose_train_weight": (_ge(0), "a loss weight"),
    "gt_train_weight": (_ge(0), "a loss weight"),
    "time_to_run": (_gt(0), "seconds; inf = no budget"),
    "dist_timeout": (_gt(0), "seconds"),
    "crop_scale": (("in (0, 4]", lambda v: 0 < v <= 4), "a factor of the released crop size; "
                   "4 is a 1024x768 crop"),
    "focal_length": (_ge(1), "pixels"),
}


INT_MAX = 2 ** 32 - 1   # every count, and the seed: larger ones break itertools and torch


def check_ranges(options) -> None:
    """Raise :class:`OptionError` (one line: the option, its range, the value, what the range
    means) for the first numeric option outside its range (RULES) or an integer above
    :data:`INT_MAX`."""
    for name, ((text, ok), meaning) in RULES.items():
        value = getattr(options, name, None)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        finite = (isinstance(value, int) or math.isfinite(value)   # (an int may exceed floats)
                  or (name == "time_to_run" and value == math.inf))
        if not finite or not ok(value):
            raise OptionError(f"--{name} must be {text}{'' if finite else ' and finite'}, got "
                              f"{value!r} ({meaning}). Pass a value in that range")
        if isinstance(value, int) and value > INT_MAX:
            raise OptionError(f"--{name} must be at most {INT_MAX}, got {value} ({meaning}). "
                              f"Pass a smaller value")
