"""Clips as model inputs: a clip npz -> an item, items -> a batch.

An item is a dict of tensors in (time, features) layout, motion resampled to the mel frame rate:
    mel (T, 80), motion (T, 234), lyrics (L, D), name, song, mel_config (MelConfig), text_encoder
and `collate_fn` stacks items of one mel length into a batch:
    mel (B, T, 80), motion (B, T, 234), lyrics (B, L, D), lyric_pad_mask (B, L) True on padding, names.
Training (dataset.MelDataset), sampling (lm2a.generate) and the report all build batches here.
"""
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from lm2a.clipio import load_clip
from lm2a.melconfig import MelConfig
from lm2a.motion import resample_to_mel

# clip keys read once per file: the model's inputs, the evaluation's and the provenance
ITEM_KEYS = ("mel", "motion", "lyrics", "fps", "sr", "hop_length", "mel_config", "text_encoder", "song",
             "start_s", "lyric_text")


def item_from_clip(clip, path):
    """A loaded clip (lm2a.clipio.load_clip with at least ITEM_KEYS' model inputs) -> the item."""
    mel = clip["mel"]  # (80, T)
    T = mel.shape[1]
    motion = resample_to_mel(clip["motion"], clip["fps"], T, clip["sr"], clip["hop_length"])  # (T, 234)
    return {
        "mel": torch.from_numpy(np.ascontiguousarray(mel.T)),
        "motion": torch.from_numpy(np.ascontiguousarray(motion, dtype=np.float32)),
        "lyrics": torch.from_numpy(clip["lyrics"]),
        "name": Path(path).stem,
        "song": clip["song"],
        "mel_config": MelConfig.parse(clip["mel_config"], where=f"{path}: mel_config"),
        "text_encoder": clip["text_encoder"],
    }


def load_item(path):
    """One clip file -> its item. Errors name the file and the key."""
    return item_from_clip(load_clip(path, keys=ITEM_KEYS), path)


def pad_lyric_tokens(tokens, length=None):
    """[(L_i, D)] lyric token tensors -> (lyrics (B, L, D) zero-padded, lyric_pad_mask (B, L) True on
    padding), L = the longest line, or `length` when longer (a fixed shape for torch.compile), and at
    least 1: a batch of null lyrics (clips without lyrics: (0, D) tokens) is one padding column."""
    lengths = torch.tensor([t.shape[0] for t in tokens])
    lyrics = pad_sequence(list(tokens), batch_first=True)
    L = max(int(lengths.max()), length or 0, 1)
    lyrics = F.pad(lyrics, (0, 0, 0, L - lyrics.shape[1]))
    return lyrics, torch.arange(L)[None, :] >= lengths[:, None]


def collate_fn(items, lyric_tokens=None):
    """Stacks mel and motion (one mel length per batch: a shorter clip is an error) and pads lyric
    tokens (to the longest line, or to lyric_tokens when given)."""
    T = {it["mel"].shape[0] for it in items}
    if len(T) != 1:
        raise ValueError(f"clips in one batch have different mel lengths {sorted(T)}: "
                         f"{[it['name'] for it in items]}")
    lyrics, pad_mask = pad_lyric_tokens([it["lyrics"] for it in items], lyric_tokens)
    return {
        "mel": torch.stack([it["mel"] for it in items]),
        "motion": torch.stack([it["motion"] for it in items]),
        "lyrics": lyrics,
        "lyric_pad_mask": pad_mask,
        "names": [it["name"] for it in items],
    }


def fixed_lyric_collate(lyric_tokens):
    """collate_fn padding every batch's lyrics to lyric_tokens (torch.compile: one shape, no
    recompiles, and no inductor backward bug with a dynamic token count)."""
    return partial(collate_fn, lyric_tokens=lyric_tokens)
