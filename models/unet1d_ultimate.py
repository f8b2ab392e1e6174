"""UNet1D_ultimate: 1D UNet over mel frames, conditioned on timestep, motion and lyric tokens.

Layout (channels = base_dim * mult per level, one resolution per level):
  init conv (+ projected motion added frame by frame)
  down level i: num_res_blocks ResBlocks, cross-attention after the last one, strided conv (not last level)
  mid: num_mid_blocks x (ResBlock, cross-attention)
  up level i: num_res_blocks + 1 ResBlocks on [h | skip], cross-attention after the first one,
              nearest interpolation + conv (not level 0; no transposed conv, no checkerboard)
  [GroupNorm-SiLU(h) | noisy input x], conv to mel_dim (zero-init).
Any input length works: the input is padded to a multiple of 2^(levels - 1) and cropped back.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .cross_attention import CrossAttentionBlock
from .embedding import LyricEmbedding, MotionEmbedding, TimestepEmbedding, sinusoidal_embedding
from .hparams import hparam
from .layout import NUM_MELS
from .motion_features import DEFAULT_MOTION_FEATURES, motion_feature_dim

__all__ = ["UNet1D_ultimate", "UNetConfig", "ResBlock", "norm_groups"]


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of UNet1D_ultimate, declared once: the network is built from it, the
    checkpoint stores asdict(config), train.py generates its model flags from these fields. The
    defaults are the recommended size (train.py's); motion_dim fits DiffusionConfig's default
    motion_features (train.py sets it from the chosen motion_features)."""
    mel_dim: int = hparam(NUM_MELS, "mel bands (input and output channels)", flag=False)
    motion_dim: int = hparam(motion_feature_dim(DEFAULT_MOTION_FEATURES),
                             "motion condition channels per frame (motion_feature_dim of the "
                             "diffusion's motion_features)", flag=False)
    lyric_dim: int = hparam(384, "lyric token width (the text encoder's; taken from the clips)", flag=False)
    base_dim: int = hparam(256, "channels at the first UNet level")
    dim_mults: tuple = hparam((1, 2, 4), "channel multiplier per UNet level")
    cond_dim: int = hparam(128, "width of the motion / lyric condition embeddings")
    time_emb_dim: int = hparam(256, "width of the diffusion-timestep embedding")
    num_res_blocks: int = hparam(2, "residual blocks per UNet level")
    num_mid_blocks: int = hparam(3, "blocks in the middle of the UNet")
    num_heads: int = hparam(8, "attention heads")
    dropout: float = hparam(0.1, "dropout inside the UNet")

    def __post_init__(self):  # normalise types (a checkpoint stores dim_mults as a list)
        object.__setattr__(self, "dim_mults", tuple(int(m) for m in self.dim_mults))


def norm_groups(channels, max_groups=32):
    """Largest GroupNorm group count <= max_groups that divides `channels`."""
    return math.gcd(max_groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM by the timestep (scale, shift), GroupNorm-SiLU-dropout-conv, + skip."""

    def __init__(self, in_ch, out_ch, time_emb_dim, dropout=0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups(in_ch), in_ch)
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, 2 * out_ch))
        self.norm2 = nn.GroupNorm(norm_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, t_emb):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, T)
        scale, shift = self.time_proj(t_emb)[:, :, None].chunk(2, dim=1)  # (B, out_ch, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):  # (B, C, T) -> (B, C, T // 2), T even
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, padding=1)

    def forward(self, x):  # (B, C, T) -> (B, C, 2 T)
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet1D_ultimate(nn.Module):
    def __init__(self, config: UNetConfig = None, **overrides):
        """UNet1D_ultimate(UNetConfig(...)), or keyword overrides of the defaults:
        UNet1D_ultimate(base_dim=32, dim_mults=(1, 2)); UNet1D_ultimate(**checkpoint_model_config)."""
        super().__init__()
        self.config = config = replace(config or UNetConfig(), **overrides)
        mel_dim, motion_dim, lyric_dim = config.mel_dim, config.motion_dim, config.lyric_dim
        base_dim, dim_mults, cond_dim = config.base_dim, config.dim_mults, config.cond_dim
        time_emb_dim, num_heads, dropout = config.time_emb_dim, config.num_heads, config.dropout
        num_res_blocks, num_mid_blocks = config.num_res_blocks, config.num_mid_blocks
        self.mel_dim, self.motion_dim, self.lyric_dim = mel_dim, motion_dim, lyric_dim
        self.cond_dim = cond_dim
        self.num_levels = len(dim_mults)
        self.length_multiple = 2 ** (self.num_levels - 1)

        self.time_embed = TimestepEmbedding(time_emb_dim)
        self.motion_embed = MotionEmbedding(motion_dim, cond_dim)
        self.lyric_embed = LyricEmbedding(lyric_dim, cond_dim)

        def attention(ch):
            return CrossAttentionBlock(ch, cond_dim, num_heads, pos_dim=cond_dim)

        self.init_conv = nn.Conv1d(mel_dim, base_dim, 7, padding=3)
        self.motion_in = nn.Conv1d(cond_dim, base_dim, 1)  # motion is at the mel frame rate

        ch = base_dim
        skip_channels = [ch]
        self.down = nn.ModuleList()
        for level, mult in enumerate(dim_mults):
            stage = nn.ModuleDict()
            stage["res"] = nn.ModuleList()
            for _ in range(num_res_blocks):
                stage["res"].append(ResBlock(ch, base_dim * mult, time_emb_dim, dropout))
                ch = base_dim * mult
                skip_channels.append(ch)
            stage["attn"] = attention(ch)
            if level < self.num_levels - 1:
                stage["downsample"] = Downsample(ch)
                skip_channels.append(ch)
            self.down.append(stage)

        self.mid_res = nn.ModuleList(ResBlock(ch, ch, time_emb_dim, dropout) for _ in range(num_mid_blocks))
        self.mid_attn = nn.ModuleList(attention(ch) for _ in range(num_mid_blocks))

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(dim_mults))):
            stage = nn.ModuleDict()
            stage["res"] = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage["res"].append(ResBlock(ch + skip_channels.pop(), base_dim * mult, time_emb_dim, dropout))
                ch = base_dim * mult
            stage["attn"] = attention(ch)
            if level > 0:
                stage["upsample"] = Upsample(ch)
            self.up.append(stage)

        # the noisy input joins the last conv: with base_dim < mel_dim the hidden states alone are
        # a bottleneck, and at high noise the target (eps ~ x_t) needs all mel_dim input bands
        self.out_norm = nn.GroupNorm(norm_groups(ch), ch)
        self.out_conv = nn.Conv1d(ch + mel_dim, mel_dim, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x, t, motion, lyrics, lyric_pad_mask=None, drop_motion=None, drop_lyrics=None):
        """x (B, mel_dim, T) normalised noisy mel, t (B,) long, motion (B, Tm, motion_dim) the motion
        condition (GaussianDiffusion.motion_input: per-clip standardised beat or rhythm channels, or
        the standardised raw features), lyrics (B, L, lyric_dim), lyric_pad_mask (B, L) bool True = padding,
        drop_* (B,) bool True = use the learned null condition. Returns (B, mel_dim, T)."""
        batch_size, _, length = x.shape
        device = x.device
        t = torch.as_tensor(t, device=device)
        if t.dim() == 0:
            t = t.expand(batch_size)
        t_emb = self.time_embed(t)  # (B, time_emb_dim)

        motion_emb = self.motion_embed(motion, drop_motion)  # (B, Tm, cond_dim)
        motion_frames = motion_emb.shape[1]
        frame_scale = length / motion_frames  # mel frames per motion frame
        key_pos = sinusoidal_embedding((torch.arange(motion_frames, device=device) + 0.5) * frame_scale,
                                       self.cond_dim)
        motion_context = motion_emb + key_pos.to(motion_emb.dtype)  # (B, Tm, cond_dim)
        lyric_context, lyric_mask = self.lyric_embed(lyrics, lyric_pad_mask, drop_lyrics)  # (B, 1+L, cond)

        padded_length = -(-length // self.length_multiple) * self.length_multiple
        pad = padded_length - length
        motion_along_time = motion_emb.transpose(1, 2)  # (B, cond_dim, Tm)
        if motion_frames != length:
            motion_along_time = F.interpolate(motion_along_time, size=length, mode="linear",
                                              align_corners=False)
        if pad:
            x = F.pad(x, (0, pad))
            motion_along_time = F.pad(motion_along_time, (0, pad), mode="replicate")
        h = self.init_conv(x) + self.motion_in(motion_along_time)  # (B, base_dim, T_pad)

        query_pos_cache = {}

        def attend(block, h):
            stride = padded_length // h.shape[-1]
            if stride not in query_pos_cache:
                centres = (torch.arange(h.shape[-1], device=device) + 0.5) * stride
                query_pos_cache[stride] = sinusoidal_embedding(centres, self.cond_dim)[None]  # (1, T_l, cond)
            return block(h, motion_context, lyric_context, lyric_mask, query_pos_cache[stride])

        skips = [h]
        for stage in self.down:
            for i, res in enumerate(stage["res"]):
                h = res(h, t_emb)
                if i == len(stage["res"]) - 1:
                    h = attend(stage["attn"], h)
                skips.append(h)
            if "downsample" in stage:
                h = stage["downsample"](h)
                skips.append(h)

        for res, attn in zip(self.mid_res, self.mid_attn):
            h = attend(attn, res(h, t_emb))

        for stage in self.up:
            for i, res in enumerate(stage["res"]):
                h = res(torch.cat([h, skips.pop()], dim=1), t_emb)
                if i == 0:
                    h = attend(stage["attn"], h)
            if "upsample" in stage:
                h = stage["upsample"](h)

        out = self.out_conv(torch.cat([F.silu(self.out_norm(h)), x], dim=1))
        return out[..., :length]  # (B, mel_dim, T)
