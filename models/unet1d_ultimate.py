"""UNet1D_ultimate: 1D UNet over mel frames, conditioned on timestep, motion and lyric tokens.

Layout (channels = base_dim * mult per level, one resolution per level):
  init conv (+ projected motion added frame by frame)
  down level i: num_res_blocks ResBlocks, cross-attention after the last one, strided conv (not last level)
  mid: num_mid_blocks x (ResBlock, cross-attention)
  up level i: num_res_blocks + 1 ResBlocks on [h | skip], cross-attention after the first one,
              nearest interpolation + conv (not level 0; no transposed conv, no checkerboard)
  [GroupNorm-SiLU(h) | noisy input x], conv to mel_dim (zero-init).
With stem_channels > 0 a band plane (BandPlane) runs 2D convolutions over (band, frame) at the mel's
full resolution beside the 1D path: its stem's features join the init conv, and its head turns the
last 1D features back into a plane, joins them with the stem's and adds a 2D conv's output.
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

__all__ = ["UNet1D_ultimate", "UNetConfig", "BandPlane", "ResBlock", "norm_groups"]


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
    stem_channels: int = hparam(16, "channels of the 2D band plane over (band, frame) at the mel's full "
                                   "resolution, beside the 1D UNet (0 = none; BandPlane)")

    def __post_init__(self):  # normalise types (a checkpoint stores dim_mults as a list)
        object.__setattr__(self, "dim_mults", tuple(int(m) for m in self.dim_mults))


def norm_groups(channels, max_groups=32):
    """Largest GroupNorm group count <= max_groups that divides `channels`."""
    return math.gcd(max_groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM by the timestep (scale, shift), GroupNorm-SiLU-dropout-conv, + skip.
    dims=1: over frames (B, C, T); dims=2: over (band, frame) planes (B, C, bands, T)."""

    def __init__(self, in_ch, out_ch, time_emb_dim, dropout=0.0, dims=1):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[dims]
        self.dims = dims
        self.norm1 = nn.GroupNorm(norm_groups(in_ch), in_ch)
        self.conv1 = conv(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, 2 * out_ch))
        self.norm2 = nn.GroupNorm(norm_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1)
        self.skip = conv(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, t_emb):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out_ch, T) or (B, out_ch, bands, T)
        film = self.time_proj(t_emb).view(*t_emb.shape[:1], -1, *(1,) * self.dims)
        scale, shift = film.chunk(2, dim=1)  # (B, out_ch, 1[, 1]) each
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


class BandPlane(nn.Module):
    """2D convolutions over the mel as an image (band, frame) at full resolution, beside the 1D UNet.

    The 1D path sees the bands as channels: every conv mixes all of them, so telling a tonal line from
    the noise beside it in the same band (local in band and frame) has to be learned band by band
    through the base_dim channels. Here the same small kernels slide over bands too.
      stem: x (B, bands, T) -> conv 3x3 -> 2D ResBlock -> p (B, C, bands, T); p flattened to
            (B, C*bands, T) and projected to base_dim (joins the 1D path's init conv)
      head: the last 1D features (B, base_dim, T) projected to (B, C*bands, T) and viewed as a plane,
            [that | p] -> 2D ResBlock -> GroupNorm-SiLU -> conv 3x3 to one plane (zero-init),
            added to the 1D path's output."""

    def __init__(self, mel_dim, channels, base_dim, time_emb_dim):
        super().__init__()
        self.mel_dim, self.channels = mel_dim, channels
        self.stem_conv = nn.Conv2d(1, channels, 3, padding=1)
        self.stem_res = ResBlock(channels, channels, time_emb_dim, dims=2)
        self.to_frames = nn.Conv1d(channels * mel_dim, base_dim, 1)
        self.from_frames = nn.Conv1d(base_dim, channels * mel_dim, 1)
        self.head_res = ResBlock(2 * channels, channels, time_emb_dim, dims=2)
        self.head_norm = nn.GroupNorm(norm_groups(channels), channels)
        self.head_conv = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.head_conv.weight)
        nn.init.zeros_(self.head_conv.bias)

    def stem(self, x, t_emb):
        """x (B, bands, T) -> (the plane p (B, C, bands, T), its projection (B, base_dim, T))."""
        p = self.stem_res(self.stem_conv(x[:, None]), t_emb)
        return p, self.to_frames(p.flatten(1, 2))

    def head(self, h, p, t_emb):
        """h (B, base_dim, T) activated last 1D features, p the stem's plane -> (B, bands, T)."""
        q = self.from_frames(h).view(p.shape)
        q = self.head_res(torch.cat([q, p], dim=1), t_emb)
        return self.head_conv(F.silu(self.head_norm(q)))[:, 0]


class UNet1D_ultimate(nn.Module):
    def __init__(self, config: UNetConfig = None, **overrides):
        """UNet1D_ultimate(UNetConfig(...)), or keyword overrides of the defaults:
        UNet1D_ultimate(base_dim=32, dim_mults=(1, 2)); UNet1D_ultimate(**checkpoint_model_config)."""
        super().__init__()
        self.config = config = replace(config or UNetConfig(), **overrides)
        mel_dim, base_dim, cond_dim = config.mel_dim, config.base_dim, config.cond_dim
        time_emb_dim, dropout = config.time_emb_dim, config.dropout
        self.mel_dim, self.motion_dim, self.lyric_dim = mel_dim, config.motion_dim, config.lyric_dim
        self.cond_dim = cond_dim
        self.num_levels = len(config.dim_mults)
        self.length_multiple = 2 ** (self.num_levels - 1)

        # built in this order: with a seed it fixes every initial weight (and the parameter order)
        self.time_embed = TimestepEmbedding(time_emb_dim)
        self.motion_embed = MotionEmbedding(config.motion_dim, cond_dim)
        self.lyric_embed = LyricEmbedding(config.lyric_dim, cond_dim)
        self.init_conv = nn.Conv1d(mel_dim, base_dim, 7, padding=3)
        self.motion_in = nn.Conv1d(cond_dim, base_dim, 1)  # motion is at the mel frame rate

        self.down, skip_channels = self._build_down(config)
        ch = skip_channels[-1]  # the last level's width
        mid = range(config.num_mid_blocks)
        self.mid_res = nn.ModuleList(ResBlock(ch, ch, time_emb_dim, dropout) for _ in mid)
        self.mid_attn = nn.ModuleList(self._attention(ch) for _ in mid)
        self.up = self._build_up(config, skip_channels)
        ch = base_dim * config.dim_mults[0]

        # the noisy input joins the last conv: with base_dim < mel_dim the hidden states alone are
        # a bottleneck, and at high noise the target (eps ~ x_t) needs all mel_dim input bands
        self.out_norm = nn.GroupNorm(norm_groups(ch), ch)
        self.out_conv = nn.Conv1d(ch + mel_dim, mel_dim, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.plane = (BandPlane(mel_dim, config.stem_channels, base_dim, time_emb_dim)
                      if config.stem_channels > 0 else None)

    def _attention(self, ch):
        config = self.config
        return CrossAttentionBlock(ch, config.cond_dim, config.num_heads, pos_dim=config.cond_dim)

    def _build_down(self, config):
        """The down levels -> (ModuleList of stages, the channels of every skip in push order)."""
        base_dim, time_emb_dim, dropout = config.base_dim, config.time_emb_dim, config.dropout
        ch = base_dim
        skip_channels = [ch]
        down = nn.ModuleList()
        for level, mult in enumerate(config.dim_mults):
            stage = nn.ModuleDict()
            stage["res"] = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                stage["res"].append(ResBlock(ch, base_dim * mult, time_emb_dim, dropout))
                ch = base_dim * mult
                skip_channels.append(ch)
            stage["attn"] = self._attention(ch)
            if level < self.num_levels - 1:
                stage["downsample"] = Downsample(ch)
                skip_channels.append(ch)
            down.append(stage)
        return down, skip_channels

    def _build_up(self, config, skip_channels):
        """The up levels, deepest first; each ResBlock takes [h | the skip it pops]."""
        base_dim, time_emb_dim, dropout = config.base_dim, config.time_emb_dim, config.dropout
        skip_channels = list(skip_channels)
        ch = skip_channels[-1]
        up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.dim_mults))):
            stage = nn.ModuleDict()
            stage["res"] = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                stage["res"].append(ResBlock(ch + skip_channels.pop(), base_dim * mult, time_emb_dim, dropout))
                ch = base_dim * mult
            stage["attn"] = self._attention(ch)
            if level > 0:
                stage["upsample"] = Upsample(ch)
            up.append(stage)
        return up

    def forward(self, x, t, motion, lyrics, lyric_pad_mask=None, drop_motion=None, drop_lyrics=None):
        """x (B, mel_dim, T) normalised noisy mel, t (B,) long, motion (B, Tm, motion_dim) the motion
        condition (GaussianDiffusion.motion_input: per-clip standardised beat or rhythm channels, or
        the standardised raw features), lyrics (B, L, lyric_dim), lyric_pad_mask (B, L) bool True = padding,
        drop_* (B,) bool True = use the learned null condition. Returns (B, mel_dim, T)."""
        batch_size, _, length = x.shape
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(batch_size)
        t_emb = self.time_embed(t)  # (B, time_emb_dim)

        padded_length = -(-length // self.length_multiple) * self.length_multiple
        motion_context, motion_along_time = self._motion_conditions(motion, drop_motion, length, padded_length)
        lyric_context, lyric_mask = self.lyric_embed(lyrics, lyric_pad_mask, drop_lyrics)  # (B, 1+L, cond)
        if padded_length != length:
            x = F.pad(x, (0, padded_length - length))
        h = self.init_conv(x) + self.motion_in(motion_along_time)  # (B, base_dim, T_pad)
        if self.plane is not None:
            plane, from_plane = self.plane.stem(x, t_emb)
            h = h + from_plane

        query_pos_cache = {}

        def attend(block, h):
            stride = padded_length // h.shape[-1]
            if stride not in query_pos_cache:
                centres = (torch.arange(h.shape[-1], device=x.device) + 0.5) * stride
                query_pos_cache[stride] = sinusoidal_embedding(centres, self.cond_dim)[None]  # (1, T_l, cond)
            return block(h, motion_context, lyric_context, lyric_mask, query_pos_cache[stride])

        h = F.silu(self.out_norm(self._levels(h, t_emb, attend)))
        out = self.out_conv(torch.cat([h, x], dim=1))
        if self.plane is not None:
            out = out + self.plane.head(h, plane, t_emb)
        return out[..., :length]  # (B, mel_dim, T)

    def _motion_conditions(self, motion, drop_motion, length, padded_length):
        """motion (B, Tm, motion_dim) -> (keys for the attention (B, Tm, cond_dim) with their mel-frame
        positions added, the embedding resampled to the mel frames (B, cond_dim, padded_length))."""
        motion_emb = self.motion_embed(motion, drop_motion)  # (B, Tm, cond_dim)
        motion_frames = motion_emb.shape[1]
        frame_scale = length / motion_frames  # mel frames per motion frame
        centres = (torch.arange(motion_frames, device=motion_emb.device) + 0.5) * frame_scale  # in mel frames
        key_pos = sinusoidal_embedding(centres, self.cond_dim)  # (Tm, cond_dim)
        motion_context = motion_emb + key_pos.to(motion_emb.dtype)  # (B, Tm, cond_dim)
        motion_along_time = motion_emb.transpose(1, 2)  # (B, cond_dim, Tm)
        if motion_frames != length:
            motion_along_time = F.interpolate(motion_along_time, size=length, mode="linear",
                                              align_corners=False)
        if padded_length != length:
            motion_along_time = F.pad(motion_along_time, (0, padded_length - length), mode="replicate")
        return motion_context, motion_along_time

    def _levels(self, h, t_emb, attend):
        """The UNet body: down levels (skips kept), middle, up levels.
        h (B, base_dim, T_pad) -> (B, base_dim * dim_mults[0], T_pad)."""
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
        return h
