"""Forward kinematics of the stick figure (lm2a/skeleton.py) on poses whose answer is known."""
import numpy as np
from scipy.spatial.transform import Rotation

from lm2a.skeleton import BONES, REST, joint_positions
from models.layout import JOINT_DIMS, RH, SMPL_JOINTS, TH

J = {n: i for i, n in enumerate(SMPL_JOINTS)}


def _pose(**joint_rotvecs):
    p = np.zeros(78)
    for name, v in joint_rotvecs.items():
        if name == "Rh":
            p[RH] = v
        elif name == "Th":
            p[TH] = v
        else:
            p[3 * J[name]:3 * J[name] + 3] = v
    return p


def test_rest_pose_is_the_rest_skeleton_with_plausible_proportions():
    x = joint_positions(np.zeros((3, 78)))
    assert x.shape == (3, 24, 3)
    np.testing.assert_allclose(x[1], REST, atol=1e-12)
    height = REST[J["head"], 1] - REST[J["left_foot"], 1]
    assert 1.4 < height < 1.7                                 # head joint to sole, a 1.70 m body
    np.testing.assert_allclose(REST[[J[f"left_{k}"] for k in ("hip", "knee", "ankle", "elbow")], 0],
                               -REST[[J[f"right_{k}"] for k in ("hip", "knee", "ankle", "elbow")], 0])
    assert len(BONES) == 23


def test_elbow_and_knee_bent_90_degrees():
    x = joint_positions(_pose(left_elbow=[0, np.pi / 2, 0], right_knee=[np.pi / 2, 0, 0]))
    forearm = REST[J["left_wrist"]] - REST[J["left_elbow"]]      # along +x in the T-pose
    np.testing.assert_allclose(x[J["left_wrist"]] - x[J["left_elbow"]], [0, 0, -forearm[0]], atol=1e-12)
    np.testing.assert_allclose(x[J["left_elbow"]], REST[J["left_elbow"]], atol=1e-12)   # the parent stays
    shank = REST[J["right_ankle"]] - REST[J["right_knee"]]       # along -y
    np.testing.assert_allclose(x[J["right_ankle"]] - x[J["right_knee"]], [0, 0, shank[1]], atol=1e-12)
    assert np.isclose(np.linalg.norm(x[J["right_foot"]] - x[J["right_ankle"]]),
                      np.linalg.norm(REST[J["right_foot"]] - REST[J["right_ankle"]]), atol=1e-12)


def test_root_yaw_and_translation():
    yaw = Rotation.from_rotvec([0, np.pi / 2, 0]).as_matrix()
    x = joint_positions(_pose(Rh=[0, np.pi / 2, 0], Th=[1.0, 0.5, -2.0]))
    np.testing.assert_allclose(x, REST @ yaw.T + [1.0, 0.5, -2.0], atol=1e-12)   # about the origin, then Th


def test_against_a_matrix_chain_on_random_poses():
    rng = np.random.default_rng(0)
    poses = rng.normal(0, 0.6, (5, 78))
    got = joint_positions(poses)
    for f in range(5):
        mats = [Rotation.from_rotvec(poses[f, 3 * j:3 * j + 3]).as_matrix() for j in range(24)]
        glob, pos = [None] * 24, [None] * 24
        root = Rotation.from_rotvec(poses[f, RH]).as_matrix()
        for j in range(24):
            p = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21][j]
            if p < 0:
                glob[j], pos[j] = root @ mats[0], root @ REST[0]
            else:
                glob[j] = glob[p] @ mats[j]
                pos[j] = pos[p] + glob[p] @ (REST[j] - REST[p])
        np.testing.assert_allclose(got[f], np.array(pos) + poses[f, TH], atol=1e-12)
    assert got.shape == (5, 24, 3) and JOINT_DIMS == 72
