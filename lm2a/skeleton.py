"""The dancer as a stick figure: joint positions by forward kinematics over SMPL's 24-joint tree.

SMPL's own rest skeleton comes from its (licensed) model files; a stick figure needs no more than
plausible proportions, so the rest pose here is built from Winter's anthropometric table (D. A. Winter,
"Biomechanics and Motor Control of Human Movement", 4th ed. 2009, fig. 4.1: segment lengths as
fractions of body height H): joint heights hip 0.530 H, knee 0.285 H, ankle 0.039 H, shoulder 0.818 H,
chin 0.870 H; upper arm 0.186 H, forearm 0.146 H, hand 0.108 H, foot 0.152 H; shoulder width 0.259 H,
hip width 0.191 H (the hip joint centres sit at half of that minus the soft tissue: 0.1 H apart). The
spine joints split the hip-to-shoulder height as SMPL's do (spine1 at 1/4, spine2 at 1/2, spine3 at 3/4
of pelvis to neck). H = 1.70 m. Like SMPL's template, the rest pose is a T-pose (arms along +-x, SMPL's
left is +x), y is up, z forward, and the pelvis sits at SMPL's y = -0.22 m, so EasyMocap's Th places the
body as SMPL would.

EasyMocap's convention (JustLMD's smplfull.json and our clips' pose block): the body posed by the 24
joint rotations `poses` (the root's poses[:3], zero in EasyMocap, included), then rotated by Rh about
the ORIGIN and moved by Th: world = R(Rh) @ x + Th.
"""
import numpy as np
from scipy.spatial.transform import Rotation

from models.layout import JOINT_DIMS, N_JOINTS, POSE_DIM, RH, SMPL_JOINTS, SMPL_PARENTS, TH

HEIGHT_M = 1.70
PELVIS_Y = -0.22   # SMPL's template pelvis height (m): Th then means what it means for SMPL


def rest_joints(height=HEIGHT_M):
    """(24, 3) rest (T-pose) joint positions in metres, SMPL joint order (models.layout.SMPL_JOINTS)."""
    h = height
    hip, knee, ankle, shoulder, chin = 0.530 * h, 0.285 * h, 0.039 * h, 0.818 * h, 0.870 * h
    pelvis = hip + 0.02 * h                          # the pelvis joint a little above the hip joints
    neck = shoulder + 0.035 * h
    y = {"pelvis": pelvis, "hip": hip, "knee": knee, "ankle": ankle, "foot": 0.01 * h,
         "spine1": pelvis + (neck - pelvis) / 4, "spine2": pelvis + (neck - pelvis) / 2,
         "spine3": pelvis + 3 * (neck - pelvis) / 4, "neck": neck, "collar": shoulder + 0.01 * h,
         "head": (chin + h) / 2 - 0.03 * h, "arm": shoulder}
    side = {"hip": 0.05 * h, "knee": 0.055 * h, "ankle": 0.055 * h, "foot": 0.06 * h,
            "collar": 0.045 * h, "shoulder": 0.259 * h / 2}
    side.update(elbow=side["shoulder"] + 0.186 * h, wrist=side["shoulder"] + 0.186 * h + 0.146 * h)
    side["hand"] = side["wrist"] + 0.108 * h / 2
    forward = {"foot": 0.152 * h * 0.6, "head": 0.02 * h}
    out = np.zeros((N_JOINTS, 3))
    for j, name in enumerate(SMPL_JOINTS):
        part = name.split("_", 1)[1] if name.startswith(("left_", "right_")) else name
        sign = 1.0 if name.startswith("left_") else -1.0 if name.startswith("right_") else 0.0
        height_of = y.get(part, y["arm"])
        out[j] = [sign * side.get(part, 0.0), height_of, forward.get(part, 0.0)]
    return out - [0.0, pelvis - PELVIS_Y, 0.0]


REST = rest_joints()
BONES = tuple((p, j) for j, p in enumerate(SMPL_PARENTS) if p >= 0)   # (parent, child) pairs to draw
# the sides drawn in one colour everywhere (video and report): the dancer's left blue, right red
SIDE_COLOURS = {"left": (60, 150, 245), "right": (240, 95, 60)}
SIDE_NAMES = {"left": "blue", "right": "red"}


def joint_positions(poses, rest=REST):
    """poses (..., F, 78) [24 joint axis-angles | Th | Rh] (a clip's pose block, EasyMocap's layout)
    -> (..., F, 24, 3) world joint positions in metres. Vectorised over frames: one pass over the tree."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.shape[-1] != POSE_DIM:
        raise ValueError(f"poses must be (..., frames, {POSE_DIM}), got {poses.shape}")
    lead = poses.shape[:-1]
    flat = poses.reshape(-1, POSE_DIM)
    local = Rotation.from_rotvec(flat[:, :JOINT_DIMS].reshape(-1, 3)).as_matrix().reshape(-1, N_JOINTS, 3, 3)
    root = Rotation.from_rotvec(flat[:, RH]).as_matrix()                        # (N, 3, 3)
    rot = np.empty_like(local)
    pos = np.empty((len(flat), N_JOINTS, 3))
    rot[:, 0] = root @ local[:, 0]
    pos[:, 0] = root @ rest[0]
    for j, p in enumerate(SMPL_PARENTS):
        if p < 0:
            continue
        rot[:, j] = rot[:, p] @ local[:, j]
        pos[:, j] = pos[:, p] + np.einsum("nab,b->na", rot[:, p], rest[j] - rest[p])
    pos += flat[:, None, TH]
    return pos.reshape(*lead, N_JOINTS, 3)
