import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import preprocess
from dataset import MelDataset
from lm2a.data import collate_fn
from lm2a.clipio import ClipFileError, load_clip, save_npz_atomic
from lm2a.motion import resample_to_mel
from tests.songs import write_song


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    write_song(root / "Songs_2022" / "a", [1.0, 7.0], lyrics=["short", "a much longer lyric line here"])
    write_song(root / "Songs_2022" / "b", [2.0], seed=3, sr=44100)
    out = tmp_path_factory.mktemp("out")
    assert preprocess.main(["--data_root", str(root), "--out_dir", str(out), "--quiet"]) == 0
    return out / "clips"


def test_batch_from_preprocessed_clips(clips):
    ds = MelDataset(clips)
    assert len(ds) == 3 and ds.lyric_dim == 384
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False, collate_fn=collate_fn)))
    assert batch["mel"].shape == (3, 516, 80) and batch["motion"].shape == (3, 516, 234)
    lens = [load_clip(p, keys=("lyrics",))["lyrics"].shape[0] for p in ds.files]
    assert batch["lyrics"].shape == (3, max(lens), 384)
    np.testing.assert_array_equal(batch["lyric_pad_mask"].sum(1).numpy(), max(lens) - np.array(lens))
    # padded positions hold zeros; real tokens equal the stored ones
    i = int(np.argmin(lens))
    assert torch.all(batch["lyrics"][i, lens[i]:] == 0)
    c = load_clip(ds.files[i])
    np.testing.assert_array_equal(batch["lyrics"][i, :lens[i]].numpy(), c["lyrics"])
    np.testing.assert_array_equal(batch["mel"][i].numpy(), c["mel"].T)


def test_motion_resampled_to_mel_rate():
    F, fps, sr, hop = 180, 30, 22050, 256
    t = np.arange(F) / fps
    motion = np.stack([t, np.sin(t)], 1)
    out = resample_to_mel(motion, fps, 516, sr, hop)
    tm = (np.arange(516) * hop + hop / 2) / sr
    np.testing.assert_allclose(out[:, 0], np.minimum(tm, t[-1]), atol=1e-9)  # linear is exact on a line
    np.testing.assert_allclose(out[:, 1], np.interp(tm, t, np.sin(t)), atol=1e-12)


def test_stats(clips):
    ds = MelDataset(clips)
    st = ds.stats()
    mels = np.concatenate([load_clip(p)["mel"].T for p in ds.files])
    np.testing.assert_allclose(st["mel_mean"], mels.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(st["mel_std"], mels.std(0), rtol=1e-3, atol=1e-4)
    assert st["motion_mean"].shape == (234,) and (st["motion_std"] > 0).all()


def test_errors_name_file_and_key(clips, tmp_path):
    z = dict(np.load(sorted(clips.glob("*.npz"))[0]))
    bad = dict(z)
    del bad["motion"]
    save_npz_atomic(tmp_path / "bad__00000000.npz", **bad)
    with pytest.raises(ClipFileError, match=r"bad__00000000.npz: missing key 'motion'"):
        MelDataset(tmp_path)
    (tmp_path / "bad__00000000.npz").unlink()
    bad = dict(z)
    bad["mel"] = z["mel"][:40]
    save_npz_atomic(tmp_path / "wrong__00000000.npz", **bad)
    with pytest.raises(ClipFileError, match=r"wrong__00000000.npz: key 'mel' has shape \(40, 516\)"):
        MelDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        MelDataset(tmp_path / "empty_dir_missing")
