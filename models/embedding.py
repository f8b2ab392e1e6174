"""Embeddings: diffusion timestep, motion frames and lyric tokens (with learned null embeddings
for classifier-free guidance)."""
import math

import torch
from torch import nn

__all__ = ["sinusoidal_embedding", "TimestepEmbedding", "MotionEmbedding", "LyricEmbedding",
           "as_drop_mask"]


def sinusoidal_embedding(positions, dim, max_period=10000.0):
    """positions (...,) any real numbers -> (..., dim) float32 [cos | sin] features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    args = positions.float()[..., None] * freqs  # (..., half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def as_drop_mask(drop, batch_size, device):
    """None / bool / (B,) tensor -> (B,) bool tensor, or None when nothing is dropped."""
    if drop is None:
        return None
    drop = torch.as_tensor(drop, device=device).bool()
    if drop.dim() == 0:
        drop = drop.expand(batch_size)
    if drop.shape != (batch_size,):
        raise ValueError(f"drop mask must have shape ({batch_size},), got {tuple(drop.shape)}")
    return drop


class TimestepEmbedding(nn.Module):
    """t (B,) -> (B, dim): sinusoidal features followed by a two-layer MLP."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(sinusoidal_embedding(t, self.dim).to(self.mlp[0].weight.dtype))


class MotionEmbedding(nn.Module):
    """Motion features (B, Tm, motion_dim) -> (B, Tm, cond_dim).

    A dropped item gets the learned null vector at every frame, so nothing of its motion remains."""

    def __init__(self, motion_dim, cond_dim):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(motion_dim, cond_dim), nn.SiLU(),
                                  nn.Linear(cond_dim, cond_dim))
        self.null = nn.Parameter(torch.randn(cond_dim) * 0.5)

    def forward(self, motion, drop=None):
        emb = self.proj(motion)  # (B, Tm, cond_dim)
        drop = as_drop_mask(drop, motion.shape[0], motion.device)
        if drop is None:  # keep the null in the graph anyway (zero grad), e.g. for DDP
            drop = torch.zeros(motion.shape[0], dtype=torch.bool, device=motion.device)
        return torch.where(drop[:, None, None], self.null.to(emb.dtype).expand_as(emb), emb)


class LyricEmbedding(nn.Module):
    """Lyric tokens (B, L, lyric_dim) + padding mask -> tokens (B, 1 + L, cond_dim), mask (B, 1 + L).

    A learned null token is prepended to every sequence and is never masked: a dropped item
    masks all its real tokens and attends to the null token alone, a kept item attends to both.
    So every row has at least one valid key (no NaN from an all-padding row), and a doubled
    cond/uncond batch needs no reshaping. Padded positions are zeroed, so their content can
    never leak into the output."""

    def __init__(self, lyric_dim, cond_dim):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(lyric_dim), nn.Linear(lyric_dim, cond_dim), nn.SiLU(),
                                  nn.Linear(cond_dim, cond_dim))
        self.null_token = nn.Parameter(torch.randn(cond_dim) * 0.5)

    def forward(self, lyrics, pad_mask=None, drop=None):
        batch_size, length = lyrics.shape[:2]
        device = lyrics.device
        tokens = self.proj(lyrics)  # (B, L, cond_dim)
        if pad_mask is None:
            pad_mask = torch.zeros(batch_size, length, dtype=torch.bool, device=device)
        else:
            pad_mask = pad_mask.to(device=device, dtype=torch.bool)
            if pad_mask.shape != (batch_size, length):
                raise ValueError(f"lyric_pad_mask must have shape ({batch_size}, {length}), "
                                 f"got {tuple(pad_mask.shape)}")
        drop = as_drop_mask(drop, batch_size, device)
        if drop is not None:
            pad_mask = pad_mask | drop[:, None]
        tokens = tokens.masked_fill(pad_mask[..., None], 0.0)
        null = self.null_token.to(tokens.dtype).expand(batch_size, 1, -1)
        tokens = torch.cat([null, tokens], dim=1)  # (B, 1 + L, cond_dim)
        pad_mask = torch.cat([torch.zeros(batch_size, 1, dtype=torch.bool, device=device),
                              pad_mask], dim=1)
        return tokens, pad_mask
