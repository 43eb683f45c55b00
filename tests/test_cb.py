"""Context Broadcasting against an independently written forward pass."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cbbench.cb import ContextBroadcast, add_context_broadcasting
from tests.conftest import tiny_vit


def reference_forward(net, x, cb_layers):
    """A ViT forward written from the paper's description, reusing only the weights."""
    x = net.patch_embed(x)
    x = torch.cat([net.cls_token.expand(len(x), -1, -1), x], dim=1) + net.pos_embed
    for i, blk in enumerate(net.blocks):
        x = x + blk.ls1(blk.attn(blk.norm1(x)))
        h = blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x))))
        if i in cb_layers:
            h = (h + h.mean(dim=1, keepdim=True)) / 2  # uniform attention, written differently on purpose
        x = x + blk.ls2(h)
    return net.head(net.norm(x)[:, 0])


@pytest.mark.parametrize("layers", [None, [0, 2], [-1]])
def test_forward_matches_reference(layers):
    base = tiny_vit(depth=3)
    net = tiny_vit(depth=3)
    add_context_broadcasting(net, layers)
    cb_layers = {0, 1, 2} if layers is None else {i % 3 for i in layers}
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(out, reference_forward(net, x, cb_layers), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, base(x), atol=1e-3), "CB must change the function"
        torch.testing.assert_close(base(x), reference_forward(base, x, set()), rtol=1e-5, atol=1e-5)


def test_layer_scale_and_deit_family():
    """CB sits before layer-scale: with init_values the reference (which applies ls2 after CB) still matches."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            embed_dim=32, depth=2, num_heads=4, num_classes=10, init_values=0.3).eval()
    add_context_broadcasting(net)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_forward(net, x, {0, 1}), rtol=1e-5, atol=1e-5)


def test_no_new_parameters_and_baseline_weights_load():
    base, cb = tiny_vit(seed=1), tiny_vit(seed=2, cb=True)
    assert list(base.state_dict()) == list(cb.state_dict())
    assert sum(p.numel() for p in base.parameters()) == sum(p.numel() for p in cb.parameters())
    cb.load_state_dict(base.state_dict(), strict=True)
    for (k, a), b in zip(base.state_dict().items(), cb.state_dict().values()):
        assert torch.equal(a, b), k
    assert sum(isinstance(m, ContextBroadcast) for m in cb.modules()) == 2


def test_context_broadcast_module_math():
    x = torch.tensor([[[1.0, 0.0], [3.0, 4.0]]])  # 1 image, 2 tokens
    expected = torch.tensor([[[1.5, 1.0], [2.5, 3.0]]])  # 0.5 x + 0.5 mean([1,0],[3,4]) = 0.5 x + [1, 1]
    torch.testing.assert_close(ContextBroadcast()(x), expected)


def test_bad_uses_are_refused():
    net = tiny_vit(cb=True)
    with pytest.raises(ValueError, match="already"):
        add_context_broadcasting(net)
    with pytest.raises(IndexError, match="out of range"):
        add_context_broadcasting(tiny_vit(), [5])
    with pytest.raises(TypeError, match="VisionTransformer"):
        add_context_broadcasting(nn.Linear(2, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_context_broadcast_is_bit_identical_to_the_paper_formula(dtype):
    """The one-pass implementation must not move a single bit (stored results predate it)."""
    torch.manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        x = (torch.randn(8, 197, 192) * scale).to(dtype)
        assert torch.equal(ContextBroadcast()(x), 0.5 * x + 0.5 * x.mean(dim=1, keepdim=True)), (dtype, scale)
    x = torch.randn(2, 17, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ContextBroadcast(), (x,))
