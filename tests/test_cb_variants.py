"""CB variants (issue #17): placement, layers, alpha and learned scales, as functions, specs and zoo models."""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from torch import nn

from cbbench.cb import ContextBroadcast, add_context_broadcasting, cb_scale_keys, has_context_broadcasting
from cbbench.models.checkpoint import load_baseline_into_scaled_cb
from cbbench.errors import CheckpointError
from cbbench.models.build import Normalized, build_network, load_model
from cbbench.models.checkpoint import load_state_dict_checked, weights_digest
from cbbench.models.spec import ModelSpec, parse_adhoc
from cbbench.models.zoo import DEMO_CB_ABLATION, MODELS
from cbbench.store import cell_key
from tests.conftest import tiny_vit

DEPTH, DIM = 4, 32
POSITIONS = ("mlp", "attn", "both")
LAYERS = {None: [0, 1, 2, 3], "first-2": [0, 1], "last-half": [2, 3], "last-1": [3], (0, -1): [0, 3], 2: [2]}
TINY_KWARGS = tuple(sorted(dict(img_size=32, patch_size=8, embed_dim=DIM, depth=2, num_heads=4,
                                num_classes=10).items()))


pytestmark = pytest.mark.usefixtures("one_thread")


def net_of(seed=0, **cb):
    net = tiny_vit(seed=seed, depth=DEPTH)
    return add_context_broadcasting(net, **cb) if cb else net


# --- an independent forward pass: attention and MLP written out, CB as the formula --------------------------

def attention(attn, x):
    b, n, c = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // attn.num_heads), dim=-1)
    return attn.proj((a @ v).transpose(1, 2).reshape(b, n, c))


def cb_formula(h, alpha, scale=None):
    mean = h.mean(dim=1, keepdim=True)
    return (1 - alpha) * h + alpha * (mean if scale is None else scale * mean)


def reference_forward(net, x, sites, alpha, scales=None):
    """``sites``: {(block, "attn"|"mlp")}; ``scales``: {(block, where): vector} for the scaled variant."""
    scales = scales or {}
    x = net.patch_embed(x)
    x = torch.cat([net.cls_token.expand(len(x), -1, -1), x], dim=1) + net.pos_embed
    for i, blk in enumerate(net.blocks):
        h = attention(blk.attn, blk.norm1(x))
        if (i, "attn") in sites:
            h = cb_formula(h, alpha, scales.get((i, "attn")))
        x = x + blk.ls1(h)
        h = blk.mlp.fc2(blk.mlp.act(blk.mlp.fc1(blk.norm2(x))))
        if (i, "mlp") in sites:
            h = cb_formula(h, alpha, scales.get((i, "mlp")))
        x = x + blk.ls2(h)
    return net.head(net.norm(x)[:, 0])


def sites_of(position, blocks):
    wheres = ("attn", "mlp") if position == "both" else (position,)
    return {(i, w) for i in blocks for w in wheres}


CASES = ([(p, layers, 0.5) for p, layers in itertools.product(POSITIONS, LAYERS)]
         + [(p, None, a) for p, a in itertools.product(POSITIONS, (0.1, 0.25, 0.75, 1.0))]
         + [("attn", "first-2", 0.25), ("both", (0, -1), 0.75)])


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("position,layers,alpha", CASES)
def test_every_variant_equals_the_written_out_formula(position, layers, alpha, scaled):
    base = net_of()
    net = net_of(layers=layers, position=position, alpha=alpha, scaled=scaled)
    sites = sites_of(position, LAYERS[layers])
    scales = {}
    if scaled:  # random scales, so the test sees them act (at init they are ones)
        gen = torch.Generator().manual_seed(1)
        for name, module in net.named_modules():
            if isinstance(module, ContextBroadcast):
                block, where = int(name.split(".")[1]), "mlp" if ".mlp." in name else "attn"
                module.scale.data = torch.rand(DIM, generator=gen) * 2
                scales[(block, where)] = module.scale.data
        assert set(scales) == sites
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(out, reference_forward(net, x, sites, alpha, scales), rtol=0, atol=1e-6)
        assert (out - base(x)).abs().max() > 1e-5, "the variant must change the function"


@pytest.mark.parametrize("position", POSITIONS)
def test_cb_sits_before_layer_scale_at_both_positions(position):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=DIM,
                            depth=2, num_heads=4, num_classes=10, init_values=0.3).eval()
    add_context_broadcasting(net, position=position, alpha=0.75)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference_forward(net, x, sites_of(position, [0, 1]), 0.75),
                                   rtol=0, atol=1e-6)


# --- the paper's CB is bit for bit what cbbench computed before the variants ------------------------------

class CBBeforeVariants(nn.Module):
    """cbbench/cb.py's ContextBroadcast before issue #17, verbatim."""

    def forward(self, x):
        half_mean = 0.5 * x.mean(dim=1, keepdim=True)
        if x.dtype in (torch.float32, torch.float64, torch.bfloat16):
            return torch.add(half_mean, x, alpha=0.5)
        return 0.5 * x + half_mean


@pytest.mark.parametrize("layers", [None, [0, 2], [-1]])
def test_defaults_are_bit_identical_to_cb_before_the_variants(layers):
    old = tiny_vit(depth=DEPTH)
    for i in range(DEPTH) if layers is None else {i % DEPTH for i in layers}:
        old.blocks[i].mlp.drop2 = nn.Sequential(old.blocks[i].mlp.drop2, CBBeforeVariants())
    new = add_context_broadcasting(tiny_vit(depth=DEPTH), layers, position="mlp", alpha=0.5, scaled=False)
    assert list(new.state_dict()) == list(old.state_dict())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(new(x), old(x))
        assert torch.equal(new.double()(x.double()), old.double()(x.double()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_default_module_is_bit_identical_in_every_dtype(dtype):
    torch.manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        x = (torch.randn(4, 50, 64) * scale).to(dtype)
        assert torch.equal(ContextBroadcast()(x), CBBeforeVariants()(x)), (dtype, scale)
        assert torch.equal(ContextBroadcast(alpha=0.5)(x), CBBeforeVariants()(x)), (dtype, scale)
        scaled = ContextBroadcast(dim=64).to(dtype)  # at init (ones) the scaled module is the unscaled one
        assert torch.equal(scaled(x), CBBeforeVariants()(x)), (dtype, scale)


def test_scaled_variant_equals_the_unscaled_one_at_init_and_learns():
    for position, alpha in (("mlp", 0.5), ("both", 0.25)):
        plain = net_of(position=position, alpha=alpha)
        scaled = net_of(position=position, alpha=alpha, scaled=True)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(scaled(x), plain(x)), position
        scaled(x).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in scaled.named_parameters() if n.endswith(".scale"))
    x = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ContextBroadcast(alpha=0.3, dim=5).double(), (x,))
    assert torch.autograd.gradcheck(ContextBroadcast(alpha=0.7), (x,))


# --- parameters and state_dicts ---------------------------------------------------------------------------

def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("position,layers", list(itertools.product(POSITIONS, LAYERS)))
def test_parameter_counts_and_keys(position, layers):
    base = net_of()
    free = net_of(layers=layers, position=position, alpha=0.25)
    scaled = net_of(layers=layers, position=position, scaled=True)
    n_sites = len(LAYERS[layers]) * (2 if position == "both" else 1)
    assert n_params(free) == n_params(base) and list(free.state_dict()) == list(base.state_dict())
    assert n_params(scaled) - n_params(base) == n_sites * DIM
    extra = set(scaled.state_dict()) - set(base.state_dict())
    assert extra == set(cb_scale_keys(scaled)) and len(extra) == n_sites
    assert set(base.state_dict()) <= set(scaled.state_dict())
    assert sum(isinstance(m, ContextBroadcast) for m in free.modules()) == n_sites


def test_baseline_state_dict_loads_strictly_into_every_parameter_free_variant():
    base = net_of(seed=1)
    for position, layers, alpha in CASES:
        net = net_of(seed=2, layers=layers, position=position, alpha=alpha)
        net.load_state_dict(base.state_dict(), strict=True)
        load_state_dict_checked(net, base.state_dict(), "baseline")
        assert weights_digest(net) == weights_digest(base), (position, layers, alpha)


def test_scaled_variant_names_exactly_its_missing_keys():
    base = net_of(seed=1)
    net = net_of(seed=2, position="both", scaled=True)  # 8 scales: more than the 5 a message usually lists
    keys = cb_scale_keys(net)
    assert len(keys) == 2 * DEPTH and all(k.endswith(("mlp.drop2.1.scale", "attn.proj_drop.1.scale")) for k in keys)
    with pytest.raises(CheckpointError) as info:
        load_state_dict_checked(net, base.state_dict(), "base.pth")
    message = str(info.value)
    assert f"{len(keys)} missing key(s)" in message and "load_baseline_into_scaled_cb" in message
    named = message.split("exactly the scales: ")[1].split(". Every other key")[0].split("; ")
    assert named == keys
    with pytest.raises(RuntimeError, match="Missing key"):  # torch agrees
        net.load_state_dict(base.state_dict(), strict=True)
    # the explicit way: everything else strict, scales at ones -> the unscaled variant with the baseline's weights
    load_baseline_into_scaled_cb(net, base.state_dict(), "base.pth")
    plain = net_of(seed=3, position="both")
    plain.load_state_dict(base.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))
    bad = {k: v for k, v in base.state_dict().items() if k != "head.bias"}
    with pytest.raises(CheckpointError, match=r"missing: .*head\.bias"):
        load_baseline_into_scaled_cb(net_of(position="both", scaled=True), bad)
    with pytest.raises(ValueError, match="already holds CB scales"):
        load_baseline_into_scaled_cb(net_of(scaled=True), net_of(seed=5, scaled=True).state_dict())


def test_scaled_checkpoint_loads_into_a_baseline_with_unexpected_keys_named(tmp_path):
    scaled = net_of(scaled=True)
    with pytest.raises(CheckpointError, match=r"unexpected: blocks\.0\.mlp\.drop2\.1\.scale"):
        load_state_dict_checked(net_of(), scaled.state_dict(), "scaled.pth")
    path = tmp_path / "base.pth"
    torch.save(build_network(ModelSpec(name="b", arch="deit_tiny_patch16_224", weights="random",
                                       arch_kwargs=TINY_KWARGS)).state_dict(), path)
    scaled_spec = parse_adhoc(f"timm:deit_tiny_patch16_224+cb(scaled=true)@{path}")
    with pytest.raises(CheckpointError, match=r"exactly the scales: blocks\.0\.mlp\.drop2\.1\.scale; "
                                              r"blocks\.1\.mlp\.drop2\.1\.scale\. Every other key fits"):
        load_model(dataclasses.replace(scaled_spec, arch_kwargs=TINY_KWARGS))  # tiny: the ad-hoc arch at 32 px
    spec = parse_adhoc(f"timm:deit_tiny_patch16_224+cb(position=attn,layers=last-1)@{path}")
    model = load_model(dataclasses.replace(spec, arch_kwargs=TINY_KWARGS))
    assert [n for n, m in model.named_modules() if isinstance(m, ContextBroadcast)] == ["net.blocks.1.attn.proj_drop.1"]


def test_bad_uses_are_refused():
    with pytest.raises(ValueError, match="already"):
        add_context_broadcasting(net_of(position="attn"), position="mlp")
    with pytest.raises(ValueError, match="mlp, attn, both"):
        add_context_broadcasting(tiny_vit(), position="ffn")
    for alpha in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"alpha .*\(0, 1\]"):
            add_context_broadcasting(tiny_vit(), alpha=alpha)
    with pytest.raises(IndexError, match="selects 5 blocks, but the model has 4"):
        add_context_broadcasting(tiny_vit(depth=DEPTH), "last-5")
    with pytest.raises(IndexError, match="out of range"):
        add_context_broadcasting(tiny_vit(depth=DEPTH), [4])
    for layers in ("middle", "last-0", [], [0.5]):
        with pytest.raises(ValueError, match="first-K, last-K"):
            add_context_broadcasting(tiny_vit(), layers)
    net = tiny_vit()
    with pytest.raises(IndexError):
        add_context_broadcasting(net, [0, 9], position="both")
    assert not has_context_broadcasting(net), "a refused call leaves the model untouched"
    assert add_context_broadcasting(tiny_vit(depth=5), "first-half").blocks[1].mlp.drop2[1].alpha == 0.5
    assert not hasattr(add_context_broadcasting(tiny_vit(depth=5), "first-half").blocks[2].mlp.drop2, "__getitem__")


# --- the ad-hoc syntax and ModelSpec ----------------------------------------------------------------------

@pytest.mark.parametrize("name,fields,label", [
    ("timm:deit_tiny_patch16_224+cb", {}, "CB"),
    ("timm:deit_tiny_patch16_224+cb()", {}, "CB"),
    ("timm:deit_tiny_patch16_224+cb(position=attn,layers=last-4,alpha=0.25)@/x/ckpt.pth",
     dict(cb_position="attn", cb_layers="last-4", cb_alpha=0.25), "CB(position=attn, layers=last-4, alpha=0.25)"),
    ("timm:deit_tiny_patch16_224+cb(scaled=true)", dict(cb_scaled=True), "CB(scaled=true)"),
    ("timm:deit_tiny_patch16_224+cb( layers = [0, -1] , position=both, alpha=1 )",
     dict(cb_layers=(0, -1), cb_position="both", cb_alpha=1.0), "CB(position=both, layers=[0, -1], alpha=1.0)"),
    ("timm:deit_tiny_patch16_224+cb(layers=-2,scaled=false)", dict(cb_layers=(-2,)), "CB(layers=[-2])"),
    ("timm:deit_tiny_patch16_224+cb(layers=first-half)", dict(cb_layers="first-half"), "CB(layers=first-half)"),
])
def test_round_trip_parse_spec_label(name, fields, label):
    spec = parse_adhoc(name)
    assert spec.cb and {k: getattr(spec, k) for k in fields} == fields
    assert spec.cb_label() == label
    again = parse_adhoc(f"timm:{spec.arch}{spec.cb_suffix()}")
    assert again.cb_settings() == spec.cb_settings() and again.cb_label() == label
    assert again.identity() == dataclasses.replace(spec, weights="timm", checkpoint=None).identity()


def test_defaults_spelled_out_are_the_paper_cb():
    plain = parse_adhoc("timm:deit_tiny_patch16_224+cb")
    spelled = parse_adhoc("timm:deit_tiny_patch16_224+cb(position=mlp,layers=all,alpha=0.5,scaled=false)")
    assert spelled.identity() == plain.identity() and spelled.cb_label() == "CB"
    assert spelled.to_dict() == {**plain.to_dict(), "name": spelled.name}
    assert parse_adhoc("timm:vit_base_patch16_224").cb_label() == ""


@pytest.mark.parametrize("settings,pattern", [
    ("foo=1", r"unknown CB setting 'foo'.*allowed: position, layers, alpha, scaled"),
    ("position=ffn", r"CB position must be one of mlp, attn, both, not 'ffn'"),
    ("alpha=0", r"CB alpha .*in \(0, 1\], not '0'"),
    ("alpha=1.5", r"CB alpha .*in \(0, 1\], not '1.5'"),
    ("alpha=half", r"CB alpha .*not 'half'"),
    ("layers=last-0", r"CB layers must be all, first-K, last-K.*not 'last-0'"),
    ("layers=[0,x]", r"CB layers must be .*not '\[0,x\]'"),
    ("layers=[]", r"CB layers must be .*not '\[\]'"),
    ("layers=middle", r"CB layers must be .*not 'middle'"),
    ("scaled=yes", r"CB scaled must be true or false, not 'yes'"),
    ("alpha", r"malformed CB setting 'alpha'.*KEY=VALUE"),
    ("alpha=0.25,alpha=0.3", r"CB setting 'alpha' given twice"),
])
def test_parse_errors_name_the_bad_key_and_the_allowed_values(settings, pattern):
    name = f"timm:deit_tiny_patch16_224+cb({settings})@/x.pth"
    with pytest.raises(ValueError, match=pattern) as info:
        parse_adhoc(name)
    assert name in str(info.value)


def test_unclosed_settings_and_specs_refuse_bad_fields():
    with pytest.raises(ValueError, match=r"no closing '\)'"):
        parse_adhoc("timm:deit_tiny_patch16_224+cb(position=attn@/x.pth")
    base = dict(name="m", arch="deit_tiny_patch16_224", weights="random", cb=True)
    for field, value, pattern in [("cb_position", "ffn", "cb_position must be one of mlp, attn, both"),
                                  ("cb_alpha", 2, r"cb_alpha .*\(0, 1\]"), ("cb_scaled", "yes", "cb_scaled"),
                                  ("cb_layers", "half", "cb_layers must be all, first-K")]:
        with pytest.raises(ValueError, match=f"model m: CB {pattern}"):
            ModelSpec(**base, **{field: value})
    with pytest.raises(ValueError, match="need cb=True"):
        ModelSpec(**{**base, "cb": False}, cb_position="attn")
    assert ModelSpec(**base, cb_layers=[0, 1]).cb_layers == (0, 1)
    assert ModelSpec(**base, cb_layers="all").cb_layers is None
    assert ModelSpec(**base, cb_alpha=1).cb_alpha == 1.0


def test_build_network_applies_the_variant():
    spec = ModelSpec(name="v", arch="vit_tiny_patch16_224", arch_kwargs=TINY_KWARGS, weights="random", cb=True,
                     cb_position="attn", cb_layers="last-1", cb_alpha=0.25, cb_scaled=True)
    net = build_network(spec)
    cbs = {n: m for n, m in net.named_modules() if isinstance(m, ContextBroadcast)}
    assert list(cbs) == ["blocks.1.attn.proj_drop.1"] and cbs["blocks.1.attn.proj_drop.1"].alpha == 0.25
    assert cb_scale_keys(net) == ["blocks.1.attn.proj_drop.1.scale"]
    base = build_network(dataclasses.replace(spec, cb=False, cb_position="mlp", cb_layers=None, cb_alpha=0.5,
                                             cb_scaled=False))
    assert all(torch.equal(base.state_dict()[k], v) for k, v in net.state_dict().items() if k in base.state_dict())


# --- identities, cell keys and the zoo --------------------------------------------------------------------

# ModelSpec.identity() of existing models, computed before the variants existed: cell keys and checkpoint names.
PINNED_IDENTITIES = {"demo_vit": "73679031b32b6e7d", "demo_vit_cb": "12e208e8b83eaad1",
                     "deit_tiny_cb": "30987dfc1dc0304a", "demo_vit_small_cb_s1": "3ed305b32f1a8739"}


def test_identity_of_existing_models_is_unchanged():
    assert {n: MODELS.get(n).identity() for n in PINNED_IDENTITIES} == PINNED_IDENTITIES
    ablation = set(itertools.chain(*DEMO_CB_ABLATION.values())) - set(DEMO_CB_ABLATION["mlp"])
    for name, spec in MODELS.items():  # every model from before the variants: no variant field in its dict
        if name not in ablation:
            assert not {"cb_position", "cb_alpha", "cb_scaled"} & set(spec.to_dict()), name
            assert spec.cb_layers is None and spec.cb_label() in ("", "CB"), name


def test_a_cached_cell_of_one_variant_is_never_served_for_another():
    names = ["demo_vit", *itertools.chain(*DEMO_CB_ABLATION.values())]
    specs = [MODELS.get(n) for n in names]
    # parameter-free variants of one seed can share their weights (digest) with the baseline: the identity separates
    keys = {cell_key(s.identity(), "same-weights", "clean", 1, {}, "digits", None, 0) for s in specs}
    assert len(keys) == len(specs)
    adhoc = ["timm:deit_tiny_patch16_224+cb@/w.pth", "timm:deit_tiny_patch16_224+cb(position=attn)@/w.pth",
             "timm:deit_tiny_patch16_224+cb(position=both)@/w.pth", "timm:deit_tiny_patch16_224+cb(alpha=0.25)@/w.pth",
             "timm:deit_tiny_patch16_224+cb(layers=last-2)@/w.pth", "timm:deit_tiny_patch16_224+cb(layers=[2,3])@/w.pth",
             "timm:deit_tiny_patch16_224+cb(scaled=true)@/w.pth", "timm:deit_tiny_patch16_224@/w.pth"]
    keys = {cell_key(parse_adhoc(n).identity(), "d", "clean", 1, {}, "imagenet", None, 0) for n in adhoc}
    assert len(keys) == len(adhoc)


def test_zoo_ablation_models_pair_with_their_same_seed_baseline():
    assert set(DEMO_CB_ABLATION) == {"mlp", "attn", "both", "first2", "last2", "alpha025", "alpha075", "scaled"}
    expected = {"attn": dict(cb_position="attn"), "both": dict(cb_position="both"), "first2": dict(cb_layers="first-2"),
                "last2": dict(cb_layers="last-2"), "alpha025": dict(cb_alpha=0.25), "alpha075": dict(cb_alpha=0.75),
                "scaled": dict(cb_scaled=True), "mlp": {}}
    for variant, names in DEMO_CB_ABLATION.items():
        suffixes = ("", "_s1", "_s2", "_s3", "_s4")
        assert names == tuple(f"demo_vit_cb{'' if variant == 'mlp' else '_' + variant}{s}" for s in suffixes)
        for seed, (name, suffix) in enumerate(zip(names, suffixes)):
            spec, base = MODELS.get(name), MODELS.get(f"demo_vit{suffix}")
            assert spec.baseline == base.name and spec.seed == base.seed == seed and spec.cb and not base.cb
            assert dataclasses.replace(spec, name=base.name, baseline=None, cb=False, cb_position="mlp",
                                       cb_layers=None, cb_alpha=0.5, cb_scaled=False) == base
            assert spec.cb_settings(defaults=False) == {k.removeprefix("cb_"): v for k, v in expected[variant].items()}
    scaled = MODELS.get("demo_vit_cb_scaled")
    assert "cbbench's reading" in scaled.description and scaled.cb_label() == "CB(scaled=true)"
    net = build_network(dataclasses.replace(scaled, weights="random"))
    assert len(cb_scale_keys(net)) == 4 and n_params(net) - n_params(build_network(
        dataclasses.replace(MODELS.get("demo_vit"), weights="random"))) == 4 * 64


# --- attention entropy through the same hooks -------------------------------------------------------------

@pytest.mark.parametrize("position", ["attn", "both"])
def test_attention_hooks_see_the_softmax_of_an_attention_position_variant(position):
    from cbbench.data.registry import load_dataset
    from cbbench.tasks import TASKS, RunSettings, TaskContext
    from cbbench.tasks.attention import attention_modules, record_attention

    base = Normalized(net_of(seed=4), (0.5,) * 3, (0.5,) * 3).eval()
    model = Normalized(net_of(seed=4, position=position, scaled=position == "both"), (0.5,) * 3, (0.5,) * 3).eval()
    for net in (base.net, model.net):  # sharper attention than at init (rows nearly uniform), the same in both
        for blk in net.blocks:
            blk.attn.qkv.weight.data *= 30
    assert len(attention_modules(model)) == DEPTH  # the CB site adds no attention module and hides none
    assert all(blk.attn.fused_attn for blk in model.net.blocks)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        fused = model(x)
        with record_attention(model) as records:
            unfused = model(x)
        with record_attention(base) as base_records:
            base(x)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    assert all(blk.attn.fused_attn for blk in model.net.blocks), "fused path must be restored"
    stats, base_stats = records[0], base_records[0]
    assert stats.shape == (3, DEPTH, 4, 3) and torch.isfinite(stats).all()
    # block 0's attention comes before any CB site; later blocks see CB'd tokens, so their attention differs
    torch.testing.assert_close(stats[:, 0], base_stats[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(stats[:, 1:], base_stats[:, 1:], atol=1e-5)
    # the hook sees this very softmax: entropy recomputed from the written-out attention of block 1
    with torch.no_grad():
        net = model.net
        h = net.patch_embed((x - 0.5) / 0.5)
        h = torch.cat([net.cls_token.expand(3, -1, -1), h], dim=1) + net.pos_embed
        h = net.blocks[0](h)
        b, n, c = h.shape
        attn = net.blocks[1].attn
        q, k, _ = attn.qkv(net.blocks[1].norm1(h)).reshape(b, n, 3, 4, c // 4).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // 4), dim=-1)
        entropy = (-(a * a.log()).sum(-1) / math.log(n)).mean(-1)
    torch.testing.assert_close(stats[:, 1, :, 0], entropy, rtol=1e-5, atol=1e-6)

    result = TASKS.get("attention_entropy").evaluate(
        model, TaskContext(load_dataset("digits"), RunSettings(limit=4, batch_size=4)))
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert 0 < result.metrics["mean_entropy"] < 1 and len([k for k in result.metrics if k.startswith("entropy/")]) == 4
