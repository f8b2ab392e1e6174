"""The tensor layout of the data, named once: mel bands and the SMPL motion features.

A clip's `mel` is (NUM_MELS, T) log-mel; its `motion` is (frames, MOTION_DIM) =
[pose POSE_DIM | velocity POSE_DIM | acceleration POSE_DIM], where a pose is the 72 axis-angles of
SMPL's 24 body joints (EasyMocap `poses`), then the root translation Th (3) and the root orientation
Rh (3). Everything that slices motion features uses these names.
"""

NUM_MELS = 80                      # log-mel bands (the default vocoder config's num_mels)

# SMPL's 24-joint body, in SMPL's joint order (the order of the 72 pose values, 3 per joint)
SMPL_JOINTS = ("pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
               "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
               "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand")
N_JOINTS = len(SMPL_JOINTS)        # 24
# each joint's parent in the kinematic tree (-1: the root)
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# (left, right) joint pairs: a mirrored dancer swaps them
SMPL_LR_PAIRS = tuple((SMPL_JOINTS.index(n), SMPL_JOINTS.index("right" + n[len("left"):]))
                      for n in SMPL_JOINTS if n.startswith("left"))

JOINT_DIMS = 3 * N_JOINTS          # 72 axis-angle values
POSE_DIM = JOINT_DIMS + 3 + 3      # 78: joints, Th (translation), Rh (root orientation)
TH = slice(JOINT_DIMS, JOINT_DIMS + 3)        # within a pose block
RH = slice(JOINT_DIMS + 3, JOINT_DIMS + 6)
MOTION_DIM = 3 * POSE_DIM          # 234: [pose | velocity | acceleration]
POSE = slice(0, POSE_DIM)                     # within the motion features
VELOCITY = slice(POSE_DIM, 2 * POSE_DIM)
ACCELERATION = slice(2 * POSE_DIM, 3 * POSE_DIM)
