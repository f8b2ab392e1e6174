"""A trained model: the network rebuilt from a checkpoint, and its typed description.

    diffusion, model = load_model("runs/exp1", device)
    model.step, model.mel_config.frame_rate, model.text_encoder.name, model.diffusion_config.timesteps

`TrainedModel` is what every stage reads about a checkpoint (never the raw dict); `build_diffusion`
rebuilds the GaussianDiffusion (UNet from its config + weights, schedule, normalisation statistics).
"""
from dataclasses import dataclass, field

import torch

from lm2a.checkpoint import (NORM_STAT_KEYS, CheckpointError, config_from_checkpoint, load_checkpoint)
from lm2a.melconfig import MelConfig
from models.diffusion import DiffusionConfig, GaussianDiffusion
from models.unet1d_ultimate import UNet1D_ultimate, UNetConfig


@dataclass(frozen=True)
class TextEncoderInfo:
    name: str   # Hugging Face name or local folder of the lyric encoder
    dim: int    # its hidden size: the lyric token width


@dataclass(frozen=True)
class TrainedModel:
    """Everything about a checkpoint except its tensors of weights and optimizer state."""
    path: str                          # the checkpoint file (or the run folder for training-time samples)
    step: int
    epoch: int
    model_config: UNetConfig
    diffusion_config: DiffusionConfig
    mel_config: MelConfig
    text_encoder: TextEncoderInfo
    norm_stats: dict = field(repr=False)  # mel_mean, mel_std, motion_mean, motion_std: float32 tensors
    use_ema: bool = True               # sampling uses the EMA weights
    val_loss: float = None
    best_val_loss: float = None
    train_args: dict = field(default_factory=dict, repr=False)
    created: str = "?"
    torch_version: str = "?"
    description: str = ""              # one paragraph for people (describe_checkpoint)

    @property
    def weights_label(self) -> str:
        return "EMA" if self.use_ema else "raw (no EMA)"


def norm_stats(ckpt: dict) -> dict:
    return {k: torch.as_tensor(ckpt["norm_stats"][k], dtype=torch.float32) for k in NORM_STAT_KEYS}


def build_diffusion(ckpt: dict, use_ema=True, device="cpu", model: TrainedModel = None) -> GaussianDiffusion:
    """GaussianDiffusion rebuilt from a checkpoint dict (lm2a.checkpoint.load_checkpoint): the UNet
    from its config + (EMA) weights, the diffusion settings and normalisation statistics; eval mode.
    `model`: the checkpoint's TrainedModel when the caller has it (else it is read here)."""
    if ckpt.get("model_class", "UNet1D_ultimate") != "UNet1D_ultimate":
        raise CheckpointError(f"{ckpt.get('_path', 'checkpoint')}: model_class "
                              f"{ckpt['model_class']!r} is not known to this code")
    model = model or trained_model(ckpt, use_ema)
    net = UNet1D_ultimate(model.model_config)
    net.load_state_dict(ckpt["ema" if model.use_ema else "model"])
    diffusion = GaussianDiffusion(net.eval(), model.diffusion_config, **model.norm_stats)
    return diffusion.to(device).eval()


def trained_model(ckpt: dict, use_ema=True) -> TrainedModel:
    """The typed description of a checkpoint dict."""
    te = ckpt["text_encoder"]
    return TrainedModel(
        path=str(ckpt.get("_path", "")), step=int(ckpt["step"]), epoch=int(ckpt.get("epoch", 0)),
        model_config=config_from_checkpoint(UNetConfig, ckpt, "model_config"),
        diffusion_config=config_from_checkpoint(DiffusionConfig, ckpt, "diffusion_config"),
        mel_config=MelConfig.parse(ckpt["mel_config"], where=f"{ckpt.get('_path', 'checkpoint')}: mel_config"),
        text_encoder=TextEncoderInfo(str(te["name"]), int(te["dim"])), norm_stats=norm_stats(ckpt),
        use_ema=bool(use_ema and ckpt.get("ema") is not None), val_loss=ckpt.get("val_loss"),
        best_val_loss=ckpt.get("best_val_loss"), train_args=dict(ckpt.get("train_args") or {}),
        created=ckpt.get("created", "?"), torch_version=ckpt.get("torch_version", "?"),
        description=describe_checkpoint(ckpt))


def load_model(ckpt_path, device="cpu", use_ema=True):
    """Checkpoint file or folder (its newest) -> (GaussianDiffusion in eval mode on `device`,
    TrainedModel). use_ema=False, or a checkpoint without EMA weights, samples the raw weights."""
    ckpt = load_checkpoint(ckpt_path, map_location="cpu")
    model = trained_model(ckpt, use_ema)
    return build_diffusion(ckpt, device=device, model=model), model


def _num_params(state_dict) -> int:
    return sum(v.numel() for v in state_dict.values() if torch.is_tensor(v) and v.is_floating_point())


def describe_checkpoint(ckpt: dict) -> str:
    """One paragraph: what this checkpoint is and how it was trained."""
    mc, dc = ckpt.get("model_config", {}), ckpt.get("diffusion_config", {})
    te, mel = ckpt.get("text_encoder", {}), ckpt.get("mel_config", {})
    vl, best = ckpt.get("val_loss"), ckpt.get("best_val_loss")
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"
    n = _num_params(ckpt["model"]) if isinstance(ckpt.get("model"), dict) else 0
    mults = ",".join(str(m) for m in mc.get("dim_mults", []))
    where = f"{ckpt['_path']}: " if "_path" in ckpt else ""
    origin = (ckpt.get("train_args") or {}).get("init_from")  # train.py --init_from
    origin = f", trained on from {origin['path']} (step {origin['step']})" if isinstance(origin, dict) else ""
    return (f"{where}LM2A {ckpt.get('model_class', '?')} at step {ckpt.get('step')} "
            f"(epoch {ckpt.get('epoch')}){origin}, val loss {fmt(vl)} (best {fmt(best)}); "
            f"{n / 1e6:.2f}M parameters (base_dim {mc.get('base_dim')}, dim_mults {mults}, "
            f"cond_dim {mc.get('cond_dim')}); diffusion {dc.get('timesteps')} steps "
            f"{dc.get('beta_schedule')}/{dc.get('objective')}; text encoder "
            f"{te.get('name')} ({te.get('dim')}-dim); mel config {mel.get('name')} "
            f"({mel.get('num_mels')} mels, {mel.get('sampling_rate')} Hz, hop {mel.get('hop_size')}); "
            f"written {ckpt.get('created', '?')} with torch {ckpt.get('torch_version', '?')}.")
