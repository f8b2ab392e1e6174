"""Cross-attention from mel hidden states to motion frames and lyric tokens.

The attention is our own q/k/v/out projections + F.scaled_dot_product_attention (SDPAAttention).
(sometest/bench.py times it against a torch.nn.MultiheadAttention variant with the same parameters.)

For pictures of what the model attends to, a CrossAttentionBlock whose `record_attention` is True
also stores its softmax weights, averaged over heads, in `attention_weights`: {"motion": (B, T, Tm),
"lyrics": (B, T, 1 + L)} (lyric key 0 is the null token). They are computed beside the attention
(same projections, explicit softmax), so the block's output is the same with recording on or off;
off, the block does no extra work (the report's attention recording sets and clears the flag).
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SDPAAttention", "CrossAttentionBlock", "attention_weights"]


class SDPAAttention(nn.Module):
    """Multi-head attention x (B, T, dim) -> context (B, S, context_dim) -> (B, T, dim)."""

    def __init__(self, dim, context_dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(context_dim, dim)
        self.to_v = nn.Linear(context_dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context, key_padding_mask=None):
        batch_size, length, dim = x.shape
        heads = self.num_heads

        def split_heads(y):  # (B, N, dim) -> (B, heads, N, dim // heads)
            return y.view(batch_size, y.shape[1], heads, dim // heads).transpose(1, 2)

        q, k, v = split_heads(self.to_q(x)), split_heads(self.to_k(context)), split_heads(self.to_v(context))
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, S), True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, T, dh)
        out = out.transpose(1, 2).reshape(batch_size, length, dim)
        return self.to_out(out)

    def get_qkvo(self):
        """The projections' weights and biases by role: {q,k,v,out}_{weight,bias}."""
        return dict(q_weight=self.to_q.weight, q_bias=self.to_q.bias, k_weight=self.to_k.weight,
                    k_bias=self.to_k.bias, v_weight=self.to_v.weight, v_bias=self.to_v.bias,
                    out_weight=self.to_out.weight, out_bias=self.to_out.bias)


@torch.no_grad()
def attention_weights(attn, x, context, key_padding_mask=None):
    """softmax(q k^T / sqrt(d_head)) of an attention module for queries x (B, T, dim) and keys
    context (B, S, context_dim), padding (True) masked, averaged over heads -> (B, T, S). `attn` is
    an SDPAAttention or any module with its `num_heads` and `get_qkvo()` (the bench's MHA variant)."""
    w = attn.get_qkvo()
    heads = attn.num_heads
    batch_size, length, dim = x.shape

    def split_heads(y):  # (B, N, dim) -> (B, heads, N, dim // heads)
        return y.view(batch_size, y.shape[1], heads, dim // heads).transpose(1, 2)

    q = split_heads(F.linear(x, w["q_weight"], w["q_bias"]))
    k = split_heads(F.linear(context, w["k_weight"], w["k_bias"]))
    scores = (q.float() @ k.float().transpose(-1, -2)) * (dim // heads) ** -0.5  # (B, heads, T, S)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    return scores.softmax(dim=-1).mean(dim=1)  # (B, T, S)


class CrossAttentionBlock(nn.Module):
    """h (B, dim, T) += fuse([attn(h, motion) | attn(h, lyrics)]), pre-norm.

    `fuse` starts at zero, so a fresh block is the identity. `query_pos` (1 or B, T, pos_dim), when
    given, is projected and added to the normalised queries so they can align with the
    positionally encoded motion frames."""

    def __init__(self, dim, context_dim, num_heads, pos_dim=None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.query_pos = nn.Linear(pos_dim, dim, bias=False) if pos_dim else None
        self.attn_motion = SDPAAttention(dim, context_dim, num_heads)
        self.attn_lyrics = SDPAAttention(dim, context_dim, num_heads)
        self.fuse = nn.Linear(2 * dim, dim)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)
        self.record_attention = False  # True: store the heads-averaged weights (module docstring)
        self.attention_weights = None

    def forward(self, h, motion_context, lyric_context, lyric_pad_mask=None, query_pos=None):
        x = self.norm(h.transpose(1, 2))  # (B, T, dim)
        if self.query_pos is not None and query_pos is not None:
            x = x + self.query_pos(query_pos.to(x.dtype))
        keep_row = None
        if lyric_pad_mask is not None:
            # an all-padding row would give NaN: let it attend to everything, then zero its output
            all_padding = lyric_pad_mask.all(dim=1)  # (B,)
            lyric_pad_mask = lyric_pad_mask & ~all_padding[:, None]
            keep_row = (~all_padding).to(x.dtype)[:, None, None]
        if self.record_attention:
            self.attention_weights = {  # (B, T, Tm) and (B, T, 1 + L)
                "motion": attention_weights(self.attn_motion, x, motion_context),
                "lyrics": attention_weights(self.attn_lyrics, x, lyric_context, lyric_pad_mask)}
        from_motion = self.attn_motion(x, motion_context)  # (B, T, dim)
        from_lyrics = self.attn_lyrics(x, lyric_context, lyric_pad_mask)  # (B, T, dim)
        if keep_row is not None:
            from_lyrics = from_lyrics * keep_row
        out = self.fuse(torch.cat([from_motion, from_lyrics], dim=-1))  # (B, T, dim)
        return h + out.transpose(1, 2)

