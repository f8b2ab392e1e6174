"""The mel configuration: one source of truth, a BigVGAN config.json."""
import json
from pathlib import Path

from lm2a import DEFAULT_VOCODER_CONFIG

MEL_KEYS = ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax")


class MelConfigError(ValueError):
    pass


def resolve_config_path(path=None) -> Path:
    """Accepts a config.json or a BigVGAN checkpoint folder holding one; None -> the default."""
    p = Path(path) if path is not None else DEFAULT_VOCODER_CONFIG
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"{p}: BigVGAN config.json not found (pass --vocoder_config BigVGAN/<name>/config.json)")
    return p


def load_mel_config(path=None) -> dict:
    """Reads the mel hparams of a BigVGAN config.json -> dict with MEL_KEYS plus 'name' (folder name).
    fmax null means sampling_rate / 2, as librosa and bigvgan read it; it is stored resolved so that
    two configs that mean the same thing compare equal."""
    p = resolve_config_path(path)
    try:
        h = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise MelConfigError(f"{p}: invalid JSON ({e})") from e
    missing = [k for k in MEL_KEYS if k not in h]
    if missing:
        raise MelConfigError(f"{p}: missing mel keys {missing} (is this a BigVGAN config.json?)")
    cfg = {k: h[k] for k in MEL_KEYS}
    cfg["fmax_resolved"] = float(cfg["fmax"]) if cfg["fmax"] is not None else cfg["sampling_rate"] / 2.0
    cfg["name"] = p.parent.name if p.name == "config.json" else p.stem
    return cfg


def mel_config_to_json(cfg: dict) -> str:
    return json.dumps(cfg, sort_keys=True)


def mel_config_from_json(s) -> dict:
    if hasattr(s, "item"):
        s = s.item()
    return json.loads(str(s))


def compare_mel_configs(a: dict, b: dict, a_name="clip", b_name="vocoder"):
    """Returns a list of human-readable mismatches, e.g. "fmax: 8000 (clip) vs 11025.0 (vocoder)"."""
    out = []
    for k in ("n_fft", "num_mels", "sampling_rate", "hop_size", "win_size", "fmin", "fmax_resolved"):
        va, vb = a.get(k), b.get(k)
        if k == "fmax_resolved":
            if va is None or vb is None or float(va) != float(vb):
                out.append(f"fmax: {va} ({a_name}) vs {vb} ({b_name})")
        elif va != vb:
            out.append(f"{k}: {va} ({a_name}) vs {vb} ({b_name})")
    return out


def as_attrdict(cfg: dict):
    """The object bigvgan.meldataset.get_mel_spectrogram expects (attribute access)."""
    from bigvgan.env import AttrDict
    return AttrDict({k: cfg[k] for k in MEL_KEYS})
