"""A trained model, typed: what `load_model` returns beside the network and every stage reads.

    diffusion, model = load_model("runs/exp1", device)
    model.step, model.mel_config.frame_rate, model.text_encoder.name, model.diffusion_config.timesteps
"""
from dataclasses import dataclass, field

from lm2a.melconfig import MelConfig
from models.diffusion import DiffusionConfig
from models.unet1d_ultimate import UNetConfig


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
    description: str = ""              # one paragraph for people (lm2a.checkpoint.describe_checkpoint)

    @property
    def weights_label(self) -> str:
        return "EMA" if self.use_ema else "raw (no EMA)"

    # ---- TEMPORARY: the old info-dict keys, until every caller reads attributes (issue 18) ----
    def __getitem__(self, key):
        if key == "_path":
            return self.path
        value = getattr(self, key)
        if key == "text_encoder":
            return {"name": value.name, "dim": value.dim}
        if key == "diffusion_config":
            from dataclasses import asdict
            return asdict(value)
        return value

    def get(self, key, default=None):
        try:
            return self[key]
        except AttributeError:
            return default
