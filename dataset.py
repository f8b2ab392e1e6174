"""MelDataset: a folder of clip npz files -> training items (lm2a/data.py), all read once.

    ds = MelDataset("split/train")
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=collate_fn)
    batch = next(iter(loader))  # mel (B,T,80), motion (B,T,234), lyrics (B,L,D), lyric_pad_mask (B,L)

Every clip is read once and kept as tensors (motion resampled to the mel frame rate at load time), so
__getitem__ is a list lookup and the loader is never the bottleneck.
"""
from pathlib import Path

from torch.utils.data import Dataset
from tqdm import tqdm

from lm2a.clipio import ClipFileError, list_clip_files
from lm2a.data import load_item
from lm2a.stats import feature_moments

STD_FLOOR = 1e-3  # a constant dimension keeps a finite normalisation


class MelDataset(Dataset):
    def __init__(self, npz_dir, files=None, progress=False):
        self.dir = Path(npz_dir)
        self.files = list(files) if files is not None else list_clip_files(self.dir)
        if not self.files:
            raise FileNotFoundError(f"{self.dir}: no clip .npz files (run preprocess.py and "
                                    f"newsplit_npz.py first)")
        self._items = [load_item(p) for p in tqdm(self.files, desc=f"loading {self.dir.name}", unit="clip",
                                                  leave=False, disable=not progress)]
        first = self._items[0]
        self.mel_config = first["mel_config"]  # MelConfig
        self.text_encoder = first["text_encoder"]
        self.lyric_dim = int(first["lyrics"].shape[1])
        self._check_consistent()

    def _check_consistent(self):
        for item, path in zip(self._items, self.files):
            for key, want in (("mel_config", self.mel_config), ("text_encoder", self.text_encoder)):
                if item[key] != want:
                    raise ClipFileError(
                        f"{path}: '{key}' differs from {self.files[0].name} ({item[key]!r} vs "
                        f"{want!r}); all clips of a split must come from one preprocess run")
            if item["lyrics"].shape[1] != self.lyric_dim:
                raise ClipFileError(f"{path}: lyric dim {item['lyrics'].shape[1]} vs "
                                    f"{self.lyric_dim} in {self.files[0].name}")

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def max_lyric_tokens(self):
        return max(item["lyrics"].shape[0] for item in self._items)

    def stats(self):
        """Per-dimension mean and std of mel (80,) and motion (234,) over all frames of all items
        (lm2a.stats.feature_moments; std floored at STD_FLOOR so constant dimensions stay finite)
        -> float32 arrays and the frame count."""
        out = {}
        for key in ("mel", "motion"):  # mel and motion share the frame rate: one count
            out[f"{key}_mean"], out[f"{key}_std"], frames = feature_moments(
                (item[key] for item in self._items), std_floor=STD_FLOOR)
        return {**out, "frames": frames}
