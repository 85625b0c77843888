"""Constants shared by the whole project (SPIN / CLIFF conventions), one place for each fact:
crop sizes, focal length, normalisation, joint names and maps, flip permutations, joint subsets.
"""
from __future__ import annotations

FOCAL_LENGTH = 5000.0          # crop-camera focal length (HMR / SPIN convention), pixels
IMG_RES = 224                  # square crop side
IMG_H, IMG_W = 256, 192        # rect crop (CLIFF)
CROP_ASPECT_RATIO = IMG_H / float(IMG_W)   # 4/3, used by the bbox rule for both bbox types
BBOX_SCALE_FACTOR = 1.2        # bbox enlargement around the GT 2D keypoints
BBOX_INFO_SCALE = 2.8          # CLIFF bbox_info normalisation of the centre offset
NUM_BETAS = 10
NUM_JOINTS_SMPL = 24
NUM_JOINTS_OUT = 49            # 25 OpenPose + 24 GT joints

# ImageNet normalisation, RGB order
IMG_NORM_MEAN = (0.485, 0.456, 0.406)
IMG_NORM_STD = (0.229, 0.224, 0.225)

# Loss weights (upstream defaults; the options carry the live values)
OUTER_LOSS_SCALE = 60.0


def crop_size(bbox_type: str, scale: float = 1.0) -> tuple[int, int]:
    """(crop_h, crop_w) for a bbox type: 'rect' -> (256, 192), 'square' -> (224, 224), times
    ``scale`` (``--crop_scale``; 1 for the released networks), rounded."""
    if bbox_type not in ("rect", "square"):
        raise ValueError(f"unknown bbox_type {bbox_type!r}: expected 'rect' or 'square'")
    h, w = (IMG_H, IMG_W) if bbox_type == "rect" else (IMG_RES, IMG_RES)
    h, w = int(round(h * scale)), int(round(w * scale))
    if not scale > 0 or min(h, w) < 16:
        raise ValueError(f"crop_scale {scale} gives a {h}x{w} crop (at least 16 px per side)")
    return h, w


def options_crop_size(options) -> tuple[int, int]:
    """The network input crop (h, w) of a set of options (``--bbox_type``, ``--crop_scale``)."""
    return crop_size(options.bbox_type, float(getattr(options, "crop_scale", 1.0)))


# ---------------------------------------------------------------------------------------------
# The 49 output joints: 25 in OpenPose BODY_25 order, then the 24 "GT" joints.
JOINT_NAMES = [
    # 25 OpenPose joints
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder", "OP LElbow",
    "OP LWrist", "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip", "OP LKnee",
    "OP LAnkle", "OP REye", "OP LEye", "OP REar", "OP LEar", "OP LBigToe", "OP LSmallToe",
    "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
    # 24 ground-truth joints
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle",
    "Right Wrist", "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)",
    "Jaw (H36M)", "Head (H36M)", "Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear",
]

# Output joint i is source joint JOINT_MAP[i] of the 54 source joints:
# 0-23 SMPL joints, 24-44 smplx vertex joints (nose, eyes, ears, feet, fingertips),
# 45-53 rows of J_regressor_extra.
JOINT_MAP = [
    24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
    8, 5, 45, 46, 4, 7, 21, 19, 17, 16, 18, 20, 47, 48, 49, 50, 51, 52, 53, 24, 26, 25, 28, 27,
]
assert len(JOINT_MAP) == NUM_JOINTS_OUT == len(JOINT_NAMES)

# Evaluation joint subsets
H36M_TO_J17 = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9]
H36M_TO_J14 = H36M_TO_J17[:14]
J24_TO_J17 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17]
J24_TO_J14 = J24_TO_J17[:14]
H36M_PELVIS = 0  # index of the pelvis among the 17 H36M-regressor joints

# GT-24 hips used to centre the 3D keypoint loss (output joints 27 and 28)
GT24_RHIP, GT24_LHIP = 2, 3

# Flip permutations (gather: new[i] = old[perm[i]])
J24_FLIP_PERM = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18, 19, 21, 20,
                 23, 22]
J49_FLIP_PERM = [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24,
                 19, 20, 21] + [25 + i for i in J24_FLIP_PERM]
SMPL_JOINTS_FLIP_PERM = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18,
                         21, 20, 23, 22]
SMPL_POSE_FLIP_PERM = [3 * j + k for j in SMPL_JOINTS_FLIP_PERM for k in range(3)]

# SMPL kinematic tree (parent of each of the 24 joints; -1 for the root)
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]

# Dataset mixtures (H36M, COCO+MPII, MPI-INF-3DHP[, 3DPW])
MIX_WITHOUT_3DPW = {"h36m": 0.5, "lsp_coco_mpii": 0.3, "mpi-inf-3dhp": 0.2}
MIX_WITH_3DPW = {"h36m": 0.4, "lsp_coco_mpii": 0.3, "mpi-inf-3dhp": 0.1, "3dpw": 0.2}
