"""What the network sees of the dance: the clip's raw motion features -> the motion condition.

The clip npz keeps the raw (frames, 234) features [pose 78 | velocity 78 | acceleration 78] (pose =
72 SMPL axis-angles of 24 joints + Th 3 + Rh 3; models/layout.py). Three views of them, chosen by
DiffusionConfig.motion_features (default DEFAULT_MOTION_FEATURES, "beat") and applied inside
GaussianDiffusion, so training, sampling and evaluation can never disagree:

  "raw"     all 234 values, standardised with the training set's per-dimension mean and std.
            Absolute pose, root position (Th) and facing (Rh) are in it: they tell the training
            songs apart (where the dancer stands, their base pose), which is what a model trained on
            a few songs learns to use, and it does not carry over to a song it has not seen.
  "rhythm"  RHYTHM_DIM channels that say when and how hard the dancer moves and nothing about
            where or in which pose: per-joint angular speed and acceleration magnitude (24 + 24),
            root speed, turning speed and their accelerations (4), total joint speed and its time
            derivative (2: the kinematic beat sits at the speed minima). Norms make them invariant
            to the dancer's facing (yaw) and position; log1p compresses the heavy tails; each channel
            is standardised over the clip's own frames, so a song's movement scale and per-joint style
            do not survive either, only the shape of the movement in time.
  "beat"    the last BEAT_DIM of the rhythm channels, the whole-body ones: root speed, turning speed,
            their accelerations, total joint speed and its derivative. No per-joint channel, so the
            choreography's style (which limbs move) is gone too; what is left is when the body moves.

The mirror of raw features (mirror_raw_motion, joints swapped by MIRROR_PERM) is here too: training
augmentation that swaps the dancer's left and right keeps the music-motion link.
"""
import torch

from .layout import ACCELERATION, JOINT_DIMS, MOTION_DIM, N_JOINTS, POSE_DIM, RH, SMPL_LR_PAIRS, TH, VELOCITY

MOTION_FEATURES = ("raw", "rhythm", "beat")
# what the network sees unless told otherwise (RESULTS.md): DiffusionConfig.motion_features' default,
# and through motion_feature_dim the default UNetConfig.motion_dim, so the two defaults always fit
DEFAULT_MOTION_FEATURES = "beat"
RHYTHM_DIM = 2 * N_JOINTS + 4 + 2  # 54
BEAT_DIM = 4 + 2  # the whole-body channels of "rhythm": root/turn speed and acceleration, total speed, its derivative
CLIP_STD_FLOOR = 0.05  # log1p units: a channel that barely moves in a clip stays near 0


def _mirror_perm():
    """Joint index -> the joint that takes its place when the dancer is mirrored (SMPL_LR_PAIRS swapped)."""
    perm = list(range(N_JOINTS))
    for left, right in SMPL_LR_PAIRS:
        perm[left], perm[right] = right, left
    return perm


MIRROR_PERM = _mirror_perm()


def motion_feature_dim(kind: str) -> int:
    """Channels of the motion condition for a DiffusionConfig.motion_features value."""
    if kind == "raw":
        return MOTION_DIM
    if kind == "rhythm":
        return RHYTHM_DIM
    if kind == "beat":
        return BEAT_DIM
    raise ValueError(f"unknown motion_features {kind!r}: choose one of {MOTION_FEATURES}")


def _norms(block, n):
    """(..., 3n) -> (..., n) Euclidean norm of each consecutive 3-vector."""
    return block.reshape(*block.shape[:-1], n, 3).norm(dim=-1)


def _time_derivative(x):
    """(B, T, C) -> d/dframe by central differences inside, one-sided at the ends (T >= 2)."""
    if x.shape[1] < 2:
        return torch.zeros_like(x)
    d = torch.empty_like(x)
    d[:, 1:-1] = (x[:, 2:] - x[:, :-2]) / 2
    d[:, 0] = x[:, 1] - x[:, 0]
    d[:, -1] = x[:, -1] - x[:, -2]
    return d


def standardize_per_clip(x, floor=CLIP_STD_FLOOR):
    """(B, T, C) -> each clip's channel minus its mean over T, divided by (its std + floor)."""
    mean = x.mean(dim=1, keepdim=True)
    std = x.std(dim=1, keepdim=True, unbiased=False) if x.shape[1] > 1 else torch.zeros_like(mean)
    return (x - mean) / (std + floor)


def rhythm_features(motion):
    """Raw motion (B, T, 234) -> (B, T, RHYTHM_DIM) rhythm channels (see the module docstring)."""
    if motion.shape[-1] != MOTION_DIM:
        raise ValueError(f"rhythm_features: motion must have {MOTION_DIM} channels, got {motion.shape[-1]}")
    motion = motion.float()
    vel, acc = motion[..., VELOCITY], motion[..., ACCELERATION]       # (B, T, 78) each
    nj = JOINT_DIMS
    joint_speed = _norms(vel[..., :nj], N_JOINTS)                   # (B, T, 24) rad/s
    joint_acc = _norms(acc[..., :nj], N_JOINTS)
    # [Th speed, Rh speed, Th acc, Rh acc]: the 6 values after the joints are Th then Rh
    root = torch.cat([_norms(vel[..., nj:], 2), _norms(acc[..., nj:], 2)], dim=-1)  # (B, T, 4)
    total = joint_speed.sum(-1, keepdim=True)
    feats = torch.log1p(torch.cat([joint_speed, joint_acc, root, total], dim=-1))
    feats = torch.cat([feats, _time_derivative(feats[..., -1:])], dim=-1)
    return standardize_per_clip(feats)


def beat_features(motion):
    """Raw motion (B, T, 234) -> (B, T, BEAT_DIM): the whole-body rhythm channels (per-clip standardised
    channel by channel, so they equal the rhythm features' last BEAT_DIM)."""
    return rhythm_features(motion)[..., -BEAT_DIM:]


DERIVED = {"rhythm": rhythm_features, "beat": beat_features}  # the kinds computed from raw motion


def mirror_raw_motion(motion):
    """Raw motion (..., 234) -> the same dance mirrored left-right (the x axis of SMPL's body frame):
    left and right joints swap and each axis-angle keeps x and negates y and z; Th negates x, Rh
    negates y and z. Linear, so it applies to the pose, velocity and acceleration blocks alike."""
    shape = motion.shape
    blocks = motion.reshape(*shape[:-1], 3, POSE_DIM)
    joints = blocks[..., :JOINT_DIMS].reshape(*shape[:-1], 3, N_JOINTS, 3)[..., MIRROR_PERM, :]
    joints = joints * joints.new_tensor([1.0, -1.0, -1.0])
    th = blocks[..., TH] * blocks.new_tensor([-1.0, 1.0, 1.0])
    rh = blocks[..., RH] * blocks.new_tensor([1.0, -1.0, -1.0])
    out = torch.cat([joints.reshape(*shape[:-1], 3, JOINT_DIMS), th, rh], dim=-1)
    return out.reshape(shape)
