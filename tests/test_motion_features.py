"""models/motion_features.py and the training augmentation (lm2a/training.augment): the rhythm
channels keep the timing of the movement and drop where the dancer stands, which way they face and
their base pose; the mirror swaps left and right; GaussianDiffusion feeds the chosen view."""
import numpy as np
import pytest
import torch

from lm2a.motion import motion_features
from lm2a.training import augment
from models.diffusion import GaussianDiffusion
from models.layout import MOTION_DIM, POSE_DIM
from models.motion_features import (BEAT_DIM, MIRROR_PERM, RHYTHM_DIM, beat_features, mirror_raw_motion,
                                    motion_feature_dim, rhythm_features)
from models.unet1d_ultimate import UNet1D_ultimate

FPS = 30


def dance(frames=180, beat_s=0.5, seed=0):
    """Poses (frames, 78): every joint swings with a cosine ease between two key poses per beat
    (zero speed on each beat), the root walks in a circle and turns slowly."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / FPS
    ease = np.cos(np.pi * t / beat_s)  # from one key pose to the other each beat, still on the beat
    poses = np.zeros((frames, POSE_DIM))
    poses[:, 3:72] = 0.2 * rng.normal(size=69) + np.outer(ease, 0.3 * rng.normal(size=69))
    poses[:, 72] = np.cos(0.5 * t)
    poses[:, 74] = np.sin(0.5 * t)
    poses[:, 76] = 0.3 * t
    return poses


def rhythm_of(poses):
    return rhythm_features(torch.from_numpy(motion_features(poses, FPS))[None])[0]


def yaw(poses, angle):
    """The dance seen from another direction: Th rotated about the vertical (y) axis; Rh (a pure
    yaw here) shifted by the angle."""
    c, s = np.cos(angle), np.sin(angle)
    out = poses.copy()
    x, z = poses[:, 72], poses[:, 74]
    out[:, 72], out[:, 74] = c * x + s * z, -s * x + c * z
    out[:, 76] = poses[:, 76] + angle
    return out


def test_rhythm_channels_ignore_position_facing_and_base_pose():
    poses = dance()
    f = rhythm_of(poses)
    assert f.shape == (180, RHYTHM_DIM) == (180, motion_feature_dim("rhythm"))
    assert motion_feature_dim("raw") == MOTION_DIM
    # standardised over the clip: every channel that moves has mean 0 and std just under 1
    assert f.mean(0).abs().max() < 1e-5
    moving = f.std(0) > 0.1
    assert moving.sum() >= 48 and (f.std(0)[moving] < 1).all()
    # another place on the floor, another facing, another base pose: the same channels
    moved = poses.copy()
    moved[:, 72:75] += np.array([3.0, 0.0, -2.0])
    moved[:, 3:72] += 0.4
    torch.testing.assert_close(rhythm_of(moved), f, atol=1e-4, rtol=0)
    torch.testing.assert_close(rhythm_of(yaw(poses, 1.1)), f, atol=1e-4, rtol=0)
    # the raw features are not invariant (what makes them a song ID)
    assert np.abs(motion_features(moved, FPS) - motion_features(poses, FPS)).max() > 0.3


def test_total_speed_channel_has_its_minima_on_the_beats():
    f = rhythm_of(dance(frames=180, beat_s=0.5))
    total = f[:, 52].numpy()  # log1p of the summed joint speed, standardised
    beats = np.arange(15, 165, 15)  # every 0.5 s at 30 fps, away from the clip's edges
    for b in beats:
        window = total[b - 4:b + 5]
        assert np.argmin(window) == 4, (b, window)
    assert total[beats].mean() < total.mean() - 1.0  # well below the clip's level on each beat


def test_mirror_swaps_left_and_right_and_is_its_own_inverse():
    poses = np.zeros((60, POSE_DIM))
    poses[:, 3 * 20 + 1] = np.sin(np.linspace(0, 6, 60))  # only the left wrist moves (joint 20)
    poses[:, 72] = np.linspace(0, 1, 60)                   # the root walks along +x
    raw = torch.from_numpy(motion_features(poses, FPS))[None]
    mirrored = mirror_raw_motion(raw)
    torch.testing.assert_close(mirror_raw_motion(mirrored), raw)
    speeds = mirrored[0, :, POSE_DIM:POSE_DIM + 72].reshape(60, 24, 3).norm(dim=-1)
    assert speeds[:, 21].max() > 0.5 and speeds[:, [j for j in range(24) if j != 21]].abs().max() == 0
    assert mirrored[0, :, 3 * 21 + 1].tolist() == (-raw[0, :, 3 * 20 + 1]).tolist()  # y negated
    assert mirrored[0, -1, 72] == -raw[0, -1, 72] < -0.9                             # walks along -x
    assert MIRROR_PERM[16] == 17 and MIRROR_PERM[17] == 16 and MIRROR_PERM[15] == 15
    # derived from models/layout.py's SMPL_LR_PAIRS: the table motion_features.py spelled out before
    assert MIRROR_PERM == [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
    # the rhythm channels of the mirror are the same channels with left and right swapped
    f, fm = rhythm_features(raw)[0], rhythm_features(mirrored)[0]
    torch.testing.assert_close(fm[:, :24], f[:, MIRROR_PERM], atol=1e-4, rtol=0)


def test_augment_mirrors_and_shifts_the_level_per_clip():
    torch.manual_seed(0)
    batch = {"mel": torch.randn(64, 80, 10), "motion": torch.randn(64, 10, MOTION_DIM),
             "lyrics": torch.randn(64, 3, 4), "lyric_pad_mask": torch.zeros(64, 3, dtype=torch.bool)}
    same = augment(batch, 0.0, 0.0)
    assert same["mel"] is batch["mel"] and same["motion"] is batch["motion"]
    out = augment(batch, 0.5, 0.3)
    flipped = [i for i in range(64) if not torch.equal(out["motion"][i], batch["motion"][i])]
    assert 15 < len(flipped) < 49
    for i in range(64):
        want = mirror_raw_motion(batch["motion"][i]) if i in flipped else batch["motion"][i]
        torch.testing.assert_close(out["motion"][i], want)
    offset = (out["mel"] - batch["mel"])  # one constant per clip
    assert torch.allclose(offset, offset[:, :1, :1].expand_as(offset), atol=1e-6)
    assert 0.2 < offset[:, 0, 0].std().item() < 0.4
    assert out["lyrics"] is batch["lyrics"]  # no swap asked: the lyric lines stay


def test_augment_eq_adds_a_smooth_zero_mean_curve_per_clip():
    torch.manual_seed(2)
    batch = {"mel": torch.randn(400, 80, 6), "motion": torch.zeros(400, 6, MOTION_DIM),
             "lyrics": torch.zeros(400, 1, 4), "lyric_pad_mask": torch.zeros(400, 1, dtype=torch.bool)}
    state = torch.get_rng_state()
    assert torch.equal(augment(batch, 0.0, 0.0, 0.0, 0.0)["mel"], batch["mel"])
    assert torch.equal(torch.get_rng_state(), state)  # eq 0 draws nothing: runs without it are unchanged
    curve = augment(batch, 0.0, 0.0, 0.0, 0.5)["mel"] - batch["mel"]
    assert torch.allclose(curve, curve[:, :, :1].expand_as(curve), atol=1e-6)  # the same in every frame
    curve = curve[:, :, 0]                                                     # (clips, bands)
    assert curve.mean(dim=1).abs().max() < 1e-5        # a shape, not a level: zero mean over the bands
    assert curve.diff(dim=1).abs().max() < 0.2          # smooth: neighbouring bands move together
    per_band = curve.std(dim=0)
    assert 0.4 < per_band.mean().item() < 0.6           # per-band std about eq_std (0.5)
    assert curve[:, :10].mean(1).sub(curve[:, -10:].mean(1)).std() > 0.5  # tilts: low vs high bands
    assert not torch.allclose(curve[0], curve[1])       # each clip its own curve


def test_beat_features_are_the_whole_body_rhythm_channels():
    raw = torch.from_numpy(motion_features(dance(frames=60), FPS))[None]
    assert motion_feature_dim("beat") == BEAT_DIM == 6
    torch.testing.assert_close(beat_features(raw), rhythm_features(raw)[..., -BEAT_DIM:])
    # whole-body norms: the left-right mirror (train.py's AUG_MIRROR) leaves them unchanged
    torch.testing.assert_close(beat_features(mirror_raw_motion(raw)), beat_features(raw), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rhythm_features(mirror_raw_motion(raw)), rhythm_features(raw), atol=1e-3)
    net = UNet1D_ultimate(mel_dim=80, motion_dim=BEAT_DIM, lyric_dim=8, base_dim=8, dim_mults=(1,),
                          cond_dim=8, time_emb_dim=8, num_res_blocks=1, num_mid_blocks=1, num_heads=2)
    diffusion = GaussianDiffusion(net, timesteps=100, motion_features="beat")
    assert diffusion.motion_input(raw).shape == (1, 60, BEAT_DIM)
    assert torch.isfinite(diffusion.loss(torch.randn(1, 80, 60), raw, torch.randn(1, 3, 8)))


def test_lyric_swap_gives_each_chosen_clip_another_clips_line():
    torch.manual_seed(1)
    for B in (2, 3, 8):
        lengths = torch.arange(B) % 3 + 1  # line i: value i in its first lengths[i] tokens
        lyrics = torch.zeros(B, 3, 4)
        pad = torch.arange(3)[None, :] >= lengths[:, None]
        for i in range(B):
            lyrics[i, :lengths[i]] = i
        batch = {"mel": torch.zeros(B, 80, 5), "motion": torch.zeros(B, 5, MOTION_DIM), "lyrics": lyrics,
                 "lyric_pad_mask": pad}
        for _ in range(50):
            out = augment(batch, 0.0, 0.0, 1.0)
            src = out["lyrics"][:, 0, 0].long()
            assert (src != torch.arange(B)).all()                          # never its own line
            assert torch.equal(out["lyric_pad_mask"], pad[src])             # the mask travels with it
            assert torch.equal(out["lyrics"], lyrics[src])
            assert torch.equal(out["mel"], batch["mel"]) and torch.equal(out["motion"], batch["motion"])
    half = augment({**batch, "lyrics": lyrics.repeat(50, 1, 1), "lyric_pad_mask": pad.repeat(50, 1)},
                   0.0, 0.0, 0.5)
    kept = (half["lyrics"][:, 0, 0] == lyrics.repeat(50, 1, 1)[:, 0, 0]).float().mean().item()
    assert 0.35 < kept < 0.65


def test_diffusion_feeds_the_rhythm_channels_and_checks_the_width():
    net = UNet1D_ultimate(mel_dim=80, motion_dim=RHYTHM_DIM, lyric_dim=8, base_dim=8, dim_mults=(1,),
                          cond_dim=8, time_emb_dim=8, num_res_blocks=1, num_mid_blocks=1, num_heads=2)
    diffusion = GaussianDiffusion(net, timesteps=100, motion_features="rhythm")
    raw = torch.from_numpy(motion_features(dance(frames=32), FPS))[None]
    torch.testing.assert_close(diffusion.motion_input(raw), rhythm_features(raw))
    assert diffusion.motion_mean.shape == (MOTION_DIM,)  # stats stay those of the raw features
    loss = diffusion.loss(torch.randn(1, 80, 32), raw, torch.randn(1, 3, 8))
    assert torch.isfinite(loss)
    wide = UNet1D_ultimate(mel_dim=80, motion_dim=MOTION_DIM, lyric_dim=8, base_dim=8, dim_mults=(1,),
                           cond_dim=8, time_emb_dim=8, num_res_blocks=1, num_mid_blocks=1, num_heads=2)
    with pytest.raises(ValueError, match="gives 54 channels but the network takes motion_dim=234"):
        GaussianDiffusion(wide, timesteps=100, motion_features="rhythm")
    with pytest.raises(ValueError, match="unknown motion_features"):
        GaussianDiffusion(wide, timesteps=100, motion_features="pose")
