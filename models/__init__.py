"""Networks (regressors, backbones) and checkpoint loading."""
from .checkpoints import (CheckpointError, load_aux_weights, load_backbone_weights,
                          load_metahmr_checkpoint, write_standin_weights)
from .regressor import LowRankDelta, build_model

__all__ = ["build_model", "LowRankDelta", "CheckpointError", "load_metahmr_checkpoint",
           "load_aux_weights", "load_backbone_weights", "write_standin_weights"]
