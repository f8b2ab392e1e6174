"""UNet1D_ultimate, its embeddings and the cross-attention block."""
import copy
import json
from pathlib import Path

import pytest
import torch

from lm2a.clipio import json_safe

from models.cross_attention import CrossAttentionBlock  # noqa: E402
from models.embedding import LyricEmbedding, sinusoidal_embedding  # noqa: E402
from models.layout import MOTION_DIM  # noqa: E402
from models.motion_features import DEFAULT_MOTION_FEATURES, motion_feature_dim  # noqa: E402
from models.unet1d_ultimate import BandPlane, UNet1D_ultimate, UNetConfig, norm_groups  # noqa: E402

torch.set_num_threads(1)
LYRIC_DIM = 24
# motion_dim = the 234 raw features (the default is the beat channels' 6): these tests feed the
# network directly, and a wide motion input exercises the motion embedding more
TINY = dict(motion_dim=MOTION_DIM, lyric_dim=LYRIC_DIM, base_dim=16, dim_mults=(1, 2), cond_dim=16,
            time_emb_dim=32, num_res_blocks=1, num_mid_blocks=1, num_heads=4, dropout=0.0)


def tiny_model(seed=0, perturb=True, **overrides):
    """A tiny UNet; `perturb` stands in for training so zero-initialised layers are non-trivial."""
    torch.manual_seed(seed)
    model = UNet1D_ultimate(**{**TINY, **overrides})
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def inputs(batch=2, length=37, lyric_len=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 80, length, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    motion = torch.randn(batch, length, 234, generator=g)
    lyrics = torch.randn(batch, lyric_len, LYRIC_DIM, generator=g)
    pad = torch.zeros(batch, lyric_len, dtype=torch.bool)
    pad[0, 3:] = True  # item 0 has 3 real tokens
    return x, t, motion, lyrics, pad


@pytest.mark.parametrize("length", [37, 516, 1])
@pytest.mark.parametrize("stem_channels", [0, 4])
def test_output_shape_matches_input_for_any_length(length, stem_channels):
    model = tiny_model(dim_mults=(1, 2, 2), stem_channels=stem_channels)
    x, t, motion, lyrics, pad = inputs(length=length)
    with torch.no_grad():
        out = model(x, t, motion, lyrics, pad)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().max() > 0


@pytest.mark.parametrize("stem_channels", [0, 4])
def test_fresh_model_outputs_zero_and_motion_length_may_differ(stem_channels):
    model = tiny_model(perturb=False, stem_channels=stem_channels)
    x, t, motion, lyrics, pad = inputs(length=40)
    with torch.no_grad():
        out = model(x, t, motion[:, :30], lyrics, pad)  # 30 motion frames for 40 mel frames
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))


def test_fresh_cross_attention_block_is_identity():
    torch.manual_seed(0)
    block = CrossAttentionBlock(32, 16, num_heads=4, pos_dim=16)
    h = torch.randn(2, 32, 11)
    motion_ctx = torch.randn(2, 11, 16)
    lyric_ctx = torch.randn(2, 4, 16)
    pad = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out = block(h, motion_ctx, lyric_ctx, pad, sinusoidal_embedding(torch.arange(11.0), 16)[None])
    assert torch.equal(out, h)


def assert_all_padding_row_is_finite(block):
    """A batch row whose lyric tokens are all padding: output and gradients stay finite."""
    torch.nn.init.normal_(block.fuse.weight)
    h = torch.randn(2, 32, 7, requires_grad=True)
    pad = torch.tensor([[False, True, True], [True, True, True]])
    out = block(h, torch.randn(2, 7, 16), torch.randn(2, 3, 16), pad)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(h.grad).all()


def test_all_padding_row_gives_no_nan():
    torch.manual_seed(0)
    assert_all_padding_row_is_finite(CrossAttentionBlock(32, 16, num_heads=4))


def test_dropping_conditions_changes_output_and_removes_their_influence():
    model = tiny_model()
    x, t, motion, lyrics, pad = inputs()
    other_motion = torch.randn_like(motion)
    other_lyrics = torch.randn_like(lyrics)
    yes = torch.ones(2, dtype=torch.bool)
    no = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        base = model(x, t, motion, lyrics, pad, drop_motion=no, drop_lyrics=no)
        assert torch.equal(base, model(x, t, motion, lyrics, pad))  # no mask == nothing dropped
        no_motion = model(x, t, motion, lyrics, pad, drop_motion=yes)
        no_lyrics = model(x, t, motion, lyrics, pad, drop_lyrics=yes)
        assert (no_motion - base).abs().max() > 1e-3
        assert (no_lyrics - base).abs().max() > 1e-3
        # the real conditions matter when kept ...
        assert (model(x, t, other_motion, lyrics, pad) - base).abs().max() > 1e-3
        assert (model(x, t, motion, other_lyrics, pad) - base).abs().max() > 1e-3
        # ... and are ignored when dropped
        torch.testing.assert_close(model(x, t, other_motion, lyrics, pad, drop_motion=yes), no_motion)
        torch.testing.assert_close(model(x, t, motion, other_lyrics, pad, drop_lyrics=yes), no_lyrics)


def test_doubled_batch_with_per_item_drops_matches_separate_forwards():
    model = tiny_model()
    x, t, motion, lyrics, pad = inputs()
    drop = torch.tensor([False, False, True, True])
    with torch.no_grad():
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([motion, motion]),
                     torch.cat([lyrics, lyrics]), torch.cat([pad, pad]), drop_motion=drop, drop_lyrics=drop)
        cond = model(x, t, motion, lyrics, pad)
        uncond = model(x, t, motion, lyrics, pad, drop_motion=torch.ones(2, dtype=torch.bool),
                       drop_lyrics=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(both[:2], cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[2:], uncond, atol=1e-5, rtol=1e-5)


def test_key_padding_hides_padded_tokens():
    model = tiny_model()
    x, t, motion, lyrics, pad = inputs()
    changed = lyrics.clone()
    changed[0, 3:] = torch.randn(2, LYRIC_DIM) * 100  # padded tokens of item 0
    with torch.no_grad():
        out = model(x, t, motion, lyrics, pad)
        out_changed = model(x, t, motion, changed, pad)
        # item 0 alone with only its 3 real tokens (no padding at all) gives the same result
        out_short = model(x[:1], t[:1], motion[:1], lyrics[:1, :3], None)
        out_unmasked = model(x, t, motion, changed, torch.zeros_like(pad))
    assert torch.equal(out, out_changed)
    torch.testing.assert_close(out_short, out[:1], atol=1e-5, rtol=1e-5)
    assert (out_unmasked[0] - out[0]).abs().max() > 1e-3  # the mask is what hides them


def test_lyric_embedding_null_token_and_mask():
    torch.manual_seed(0)
    embed = LyricEmbedding(LYRIC_DIM, 8)
    lyrics = torch.randn(3, 4, LYRIC_DIM)
    pad = torch.tensor([[False] * 4, [False, False, True, True], [True] * 4])
    tokens, mask = embed(lyrics, pad, drop=torch.tensor([False, True, False]))
    assert tokens.shape == (3, 5, 8) and mask.shape == (3, 5)
    assert not mask[:, 0].any()  # the null token is always a valid key
    assert mask[1, 1:].all()  # dropped: only the null token remains
    assert mask.tolist()[0] == [False] * 5 and mask.tolist()[2] == [False] + [True] * 4
    assert torch.equal(tokens[:, 0], embed.null_token.expand(3, 8))


def test_config_round_trip_and_backward():
    model = tiny_model()
    config = json.loads(json.dumps(json_safe(model.config)))
    assert config["dim_mults"] == [1, 2] and "attn_impl" not in config
    rebuilt = UNet1D_ultimate(**config)
    rebuilt.load_state_dict(model.state_dict())
    x, t, motion, lyrics, pad = inputs()
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x, t, motion, lyrics, pad), model(x, t, motion, lyrics, pad))
    model.train()
    model(x, t, motion, lyrics, pad).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["motion_embed.null"].abs().sum() == 0  # motion not dropped: its null is unused
    assert grads["lyric_embed.null_token"].abs().sum() > 0  # the null lyric token is always a key


def test_group_norm_groups_divide_channels():
    for channels in (16, 32, 48, 64, 96, 256, 1024):
        assert channels % norm_groups(channels) == 0
    model = UNet1D_ultimate(**{**TINY, "base_dim": 24, "num_heads": 3})
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0


def test_dropout_is_active_in_training_mode_only():
    model = tiny_model(dropout=0.5)
    x, t, motion, lyrics, pad = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, motion, lyrics, pad), model(x, t, motion, lyrics, pad))
        model.train()
        assert not torch.equal(model(x, t, motion, lyrics, pad), model(x, t, motion, lyrics, pad))


def test_default_motion_dim_fits_the_default_motion_features():
    """One value per setting: the network's default motion input is the diffusion's default view."""
    assert UNetConfig().motion_dim == motion_feature_dim(DEFAULT_MOTION_FEATURES) == 6


def test_band_plane_slides_over_bands_and_joins_both_ends():
    """The plane's stem is a convolution over bands as well as frames: a pattern moved up by k bands
    gives the same features moved by k bands (away from the edges), which the 1D path's band-mixing
    convs do not; the head's output takes gradients from every plane parameter and the 1D path."""
    torch.manual_seed(0)
    plane = BandPlane(mel_dim=40, channels=4, base_dim=16, time_emb_dim=32).eval()
    t_emb = torch.randn(1, 32)
    x = torch.zeros(1, 40, 30)
    x[0, 10:13, 5:20] = torch.randn(3, 15)  # a short patch of tone-like rows
    shifted = torch.roll(x, 7, dims=1)
    with torch.no_grad():
        p, to_frames = plane.stem(x, t_emb)
        p_shift, _ = plane.stem(shifted, t_emb)
    assert p.shape == (1, 4, 40, 30) and to_frames.shape == (1, 16, 30)
    # three 3x3 convs: bands 3 or more from either edge (in both planes) do not see the padding
    torch.testing.assert_close(torch.roll(p, 7, dims=2)[:, :, 10:37], p_shift[:, :, 10:37], rtol=1e-4, atol=1e-5)
    assert (p - p_shift).abs().max() > 0.1  # and it did move

    model = tiny_model(stem_channels=4)
    x, t, motion, lyrics, pad = inputs()
    model.train()
    model(x, t, motion, lyrics, pad).pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    plane_grads = [g for n, g in grads.items() if n.startswith("plane.")]
    assert len(plane_grads) > 10 and all(g is not None and g.abs().sum() > 0 for g in plane_grads)
    assert grads["init_conv.weight"].abs().sum() > 0
