"""The mel configuration: one type, one source of truth (a BigVGAN config.json).

`MelConfig` is what every stage passes around. It is stored as JSON in a clip npz (`mel_config`)
and as a dict in a checkpoint (`to_dict()`, the same keys); `MelConfig.parse` reads any of them.
The frame rate, hop and frame counts of a mel come from it and from nowhere else.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lm2a import DEFAULT_VOCODER_CONFIG

MEL_KEYS = ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax")


class MelConfigError(ValueError):
    pass


@dataclass(frozen=True)
class MelConfig:
    """The mel hparams of a BigVGAN config.json and the config's name. fmax None means
    sampling_rate / 2 (as librosa and bigvgan read it); `fmax_resolved` is that value, so two configs
    that mean the same thing compare equal (`differences`)."""
    n_fft: int
    num_mels: int
    sampling_rate: int
    hop_size: int
    win_size: int
    fmin: float
    fmax: float = None
    name: str = ""

    @property
    def fmax_resolved(self) -> float:
        return float(self.fmax) if self.fmax is not None else self.sampling_rate / 2.0

    @property
    def frame_rate(self) -> float:
        """Mel frames per second (86.13 at 22050 Hz, hop 256)."""
        return self.sampling_rate / self.hop_size

    @property
    def hop_seconds(self) -> float:
        return self.hop_size / self.sampling_rate

    def n_frames(self, n_samples: int) -> int:
        """Frames bigvgan's mel gives for n samples (reflect pad (n_fft-hop)/2 each side, center=False)."""
        pad = (self.n_fft - self.hop_size) // 2
        return (int(n_samples) + 2 * pad - self.n_fft) // self.hop_size + 1

    def frames_for_seconds(self, seconds: float) -> int:
        """Mel frames of `seconds` of audio at this rate."""
        return self.n_frames(int(round(seconds * self.sampling_rate)))

    def to_dict(self) -> dict:
        """What a checkpoint stores (MEL_KEYS, fmax_resolved, name)."""
        return {**asdict(self), "fmax_resolved": self.fmax_resolved}

    def to_json(self) -> str:
        """What a clip npz stores."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def parse(cls, value, where="mel_config") -> "MelConfig":
        """A MelConfig from a MelConfig, a dict (checkpoint, config.json) or a JSON string (a clip
        npz's str or 0-d array). Raises MelConfigError naming `where` and the missing keys."""
        if isinstance(value, cls):
            return value
        if isinstance(value, np.ndarray) or hasattr(value, "item") and not isinstance(value, dict):
            value = value.item()
        if isinstance(value, (str, bytes)):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise MelConfigError(f"{where}: invalid JSON ({e})") from e
        if not isinstance(value, dict):
            raise MelConfigError(f"{where}: expected a mel config, got a {type(value).__name__}")
        missing = [k for k in MEL_KEYS if k not in value]
        if missing:
            raise MelConfigError(f"{where}: missing mel keys {missing} (is this a BigVGAN config.json?)")
        return cls(**{k: value[k] for k in MEL_KEYS}, name=str(value.get("name", "")))

    def differences(self, other: "MelConfig", a_name="clip", b_name="vocoder") -> list:
        """Human-readable mismatches, e.g. "fmax: 8000.0 (clip) vs 11025.0 (vocoder)"; [] = same mel."""
        out = [f"{k}: {getattr(self, k)} ({a_name}) vs {getattr(other, k)} ({b_name})"
               for k in ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin")
               if getattr(self, k) != getattr(other, k)]
        if self.fmax_resolved != other.fmax_resolved:
            out.append(f"fmax: {self.fmax_resolved} ({a_name}) vs {other.fmax_resolved} ({b_name})")
        return out

    def hparams(self):
        """The object bigvgan.meldataset.get_mel_spectrogram expects (attribute access)."""
        from bigvgan.env import AttrDict  # bigvgan's package import pulls in its model code: only when asked
        return AttrDict({k: getattr(self, k) for k in MEL_KEYS})


def resolve_config_path(path=None) -> Path:
    """Accepts a config.json or a BigVGAN checkpoint folder holding one; None -> the default."""
    p = Path(path) if path is not None else DEFAULT_VOCODER_CONFIG
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: BigVGAN config.json not found (pass --vocoder_config BigVGAN/<name>/config.json)")
    return p


def load_mel_config(path=None) -> MelConfig:
    """The mel hparams of a BigVGAN config.json (or a folder holding one; None = the default),
    named after its folder."""
    p = resolve_config_path(path)
    try:
        h = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MelConfigError(f"{p}: invalid JSON ({e})") from e
    h["name"] = p.parent.name if p.name == "config.json" else p.stem
    return MelConfig.parse(h, where=str(p))

