"""sometest/bench.py's attention baseline: torch.nn.MultiheadAttention in place of our SDPA attention
(the training rows time one against the other), equal to it with the same weights."""
import torch

from models.cross_attention import CrossAttentionBlock
from models.unet1d_ultimate import UNet1D_ultimate
from sometest.bench import MHAAttention, check_attention, copy_weights_across_impl, mha_attention
from tests.test_models_unet import TINY, assert_all_padding_row_is_finite, inputs, tiny_model

torch.set_num_threads(1)


def test_mha_attention_builds_the_mha_variant_and_only_inside_the_block():
    with mha_attention():
        mha = UNet1D_ultimate(**TINY)
    check_attention(mha, "mha")
    check_attention(UNet1D_ultimate(**TINY), "sdpa")
    assert sum(p.numel() for p in mha.parameters()) == sum(p.numel() for p in tiny_model().parameters())


def test_mha_and_sdpa_give_equal_outputs_with_copied_weights():
    sdpa = tiny_model()
    torch.manual_seed(123)
    with mha_attention():
        mha = UNet1D_ultimate(**TINY).eval()
    copy_weights_across_impl(mha, sdpa)
    x, t, motion, lyrics, pad = inputs()
    with torch.no_grad():
        out_sdpa = sdpa(x, t, motion, lyrics, pad, drop_lyrics=torch.tensor([False, True]))
        out_mha = mha(x, t, motion, lyrics, pad, drop_lyrics=torch.tensor([False, True]))
    assert out_sdpa.abs().max() > 1e-3
    torch.testing.assert_close(out_mha, out_sdpa, atol=1e-5, rtol=1e-4)
    # and back again
    sdpa_again = UNet1D_ultimate(**TINY).eval()
    copy_weights_across_impl(sdpa_again, mha)
    for (k, a), b in zip(sdpa.state_dict().items(), sdpa_again.state_dict().values()):
        assert torch.equal(a, b), k


def test_mha_equals_sdpa_when_context_dim_equals_dim():
    torch.manual_seed(0)
    a = CrossAttentionBlock(16, 16, num_heads=4)
    with mha_attention():
        b = CrossAttentionBlock(16, 16, num_heads=4)  # packed in_proj_weight
    assert isinstance(b.attn_motion, MHAAttention)
    torch.nn.init.normal_(a.fuse.weight)
    copy_weights_across_impl(b, a)
    h, m, l = torch.randn(2, 16, 9), torch.randn(2, 9, 16), torch.randn(2, 3, 16)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    torch.testing.assert_close(b(h, m, l, pad), a(h, m, l, pad), atol=1e-5, rtol=1e-4)


def test_all_padding_row_gives_no_nan_with_mha():
    torch.manual_seed(0)
    with mha_attention():
        block = CrossAttentionBlock(32, 16, num_heads=4)
    assert_all_padding_row_is_finite(block)
