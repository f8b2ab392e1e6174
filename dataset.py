"""MelDataset: one folder of clip npz files, or several together -> training items (lm2a/data.py),
all read once.

    ds = MelDataset("split/train")                          # or MelDataset(["justlmd/train", "aist/train"])
    loader = DataLoader(ds, batch_size=16, shuffle=True, collate_fn=collate_fn)
    batch = next(iter(loader))  # mel (B,T,80), motion (B,T,234), lyrics (B,L,D), lyric_pad_mask (B,L)

Every clip is read once and kept as tensors (motion resampled to the mel frame rate at load time), so
__getitem__ is a list lookup and the loader is never the bottleneck. Several folders are their union
(items in the order of the folders); their clips must share the mel config, text encoder and lyric
dim, and may differ in length (`mel_lengths`: lm2a.training.EpochBatchSampler batches one length
at a time).
"""
from pathlib import Path

from torch.utils.data import Dataset
from tqdm import tqdm

from lm2a.clipio import ClipFileError, list_clip_files
from lm2a.data import load_item
from lm2a.stats import feature_moments

STD_FLOOR = 1e-3  # a constant dimension keeps a finite normalisation


def as_folders(npz_dir):
    """A folder (str or Path) or several -> [Path]."""
    return [Path(d) for d in ([npz_dir] if isinstance(npz_dir, (str, Path)) else npz_dir)]


class MelDataset(Dataset):
    def __init__(self, npz_dir, files=None, progress=False):
        """npz_dir: a folder or several; files: the clips to read instead of all of the folder's
        (one folder). `dir` is the folder, or "A + B" for several (for messages)."""
        self.dirs = as_folders(npz_dir)
        if not self.dirs:
            raise FileNotFoundError("no clip folder given (expected one or more folders of clip .npz files)")
        self.dir = self.dirs[0] if len(self.dirs) == 1 else " + ".join(map(str, self.dirs))
        listed = [list(files)] if files is not None else [list_clip_files(d) for d in self.dirs]
        self.files, self.folder_of, self._items = [], [], []
        for k, (folder, paths) in enumerate(zip(self.dirs, listed)):
            if not paths:
                raise FileNotFoundError(f"{folder}: no clip .npz files (run preprocess.py and "
                                        f"newsplit_npz.py first)")
            self._items += [load_item(p) for p in tqdm(paths, desc=f"loading {folder.name}", unit="clip",
                                                       leave=False, disable=not progress)]
            self.files += paths
            self.folder_of += [k] * len(paths)
        first = self._items[0]
        self.mel_config = first["mel_config"]  # MelConfig
        self.text_encoder = first["text_encoder"]
        self.lyric_dim = int(first["lyrics"].shape[1])
        self._check_folders_agree()
        self._check_consistent()

    def _firsts(self):
        """{folder index: index of its first item}."""
        out = {}
        for i, k in enumerate(self.folder_of):
            out.setdefault(k, i)
        return out

    def _check_folders_agree(self):
        """Each folder's first clip against the first folder's: mel config, text encoder, lyric dim."""
        a = self.dirs[0]
        for k, i in self._firsts().items():
            item, b = self._items[i], self.dirs[k]
            diffs = item["mel_config"].differences(self.mel_config, str(b), str(a))
            if item["text_encoder"] != self.text_encoder or item["lyrics"].shape[1] != self.lyric_dim:
                diffs.append(f"text encoder {item['text_encoder']!r} ({item['lyrics'].shape[1]}-dim) ({b}) vs "
                             f"{self.text_encoder!r} ({self.lyric_dim}-dim) ({a})")
            if diffs:
                raise ClipFileError(f"{b} and {a}: the clips of these folders differ: {'; '.join(diffs)}; "
                                    f"folders trained together must come from one mel config and text "
                                    f"encoder (re-run preprocess.py for one of them with the other's)")

    def _check_consistent(self):
        firsts = self._firsts()
        for item, path, k in zip(self._items, self.files, self.folder_of):
            ref = self._items[firsts[k]]
            for key in ("mel_config", "text_encoder"):
                if item[key] != ref[key]:
                    raise ClipFileError(
                        f"{path}: '{key}' differs from {self.files[firsts[k]].name} ({item[key]!r} vs "
                        f"{ref[key]!r}); all clips of a split must come from one preprocess run")
            if item["lyrics"].shape[1] != self.lyric_dim:
                raise ClipFileError(f"{path}: lyric dim {item['lyrics'].shape[1]} vs "
                                    f"{self.lyric_dim} in {self.files[firsts[k]].name}")

    def __len__(self):
        return len(self._items)

    def __getitem__(self, i):
        return self._items[i]

    def max_lyric_tokens(self):
        return max(item["lyrics"].shape[0] for item in self._items)

    def mel_lengths(self):
        """Each item's mel length (frames)."""
        return [int(item["mel"].shape[0]) for item in self._items]

    def folders(self):
        """[(folder, clip count, sorted mel lengths of its clips)] in the order given."""
        lengths = self.mel_lengths()
        return [(d, self.folder_of.count(k), sorted({n for n, j in zip(lengths, self.folder_of) if j == k}))
                for k, d in enumerate(self.dirs)]

    def describe(self):
        """'A (120 clips of 516 frames), B (300 clips of 173 frames)'."""
        return ", ".join(f"{d} ({n} clips of {'/'.join(map(str, lengths))} frames)"
                         for d, n, lengths in self.folders())

    def stats(self):
        """Per-dimension mean and std of mel (80,) and motion (234,) over all frames of all items
        (lm2a.stats.feature_moments; std floored at STD_FLOOR so constant dimensions stay finite)
        -> float32 arrays and the frame count."""
        out = {}
        for key in ("mel", "motion"):  # mel and motion share the frame rate: one count
            out[f"{key}_mean"], out[f"{key}_std"], frames = feature_moments(
                (item[key] for item in self._items), std_floor=STD_FLOOR)
        return {**out, "frames": frames}
