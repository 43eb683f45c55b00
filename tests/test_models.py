"""Model specs, the ad-hoc syntax, checkpoint loading and its error messages."""
from __future__ import annotations

import argparse

import pytest
import torch

from cbbench.errors import CheckpointError
from cbbench.models.build import Normalized, build_network, load_model
from cbbench.models.checkpoint import weights_digest
from cbbench.models.spec import ModelSpec, parse_adhoc
from cbbench.models.zoo import MODELS, resolve
from cbbench.registry import UnknownNameError

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)


def tiny_spec(**changes) -> ModelSpec:
    base = dict(name="tiny", arch="deit_tiny_patch16_224", arch_kwargs=tuple(sorted(TINY.items())), weights="random")
    return ModelSpec(**{**base, **changes})


def test_every_cb_model_names_a_registered_baseline_with_the_same_network():
    for name, spec in MODELS.items():
        if spec.cb:
            base = MODELS.get(spec.baseline)
            assert not base.cb and base.arch == spec.arch and base.arch_kwargs == spec.arch_kwargs, name
            assert base.seed == spec.seed and base.recipe == spec.recipe, name


def test_parse_adhoc():
    spec = parse_adhoc("timm:deit_small_patch16_224+cb@/tmp/ckpt.pth")
    assert (spec.arch, spec.cb, spec.weights, spec.checkpoint) == ("deit_small_patch16_224", True, "file", "/tmp/ckpt.pth")
    spec = parse_adhoc("timm:vit_base_patch16_224")
    assert (spec.cb, spec.weights) == (False, "timm")
    with pytest.raises(ValueError, match="timm:ARCH"):
        parse_adhoc("timm:deit small")


def test_unknown_model_suggests_names():
    with pytest.raises(UnknownNameError, match="demo_vit_cb"):
        resolve("demo_vit_bc")


def test_normalization_is_inside_and_eval_mode():
    model = load_model(tiny_spec(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))
    assert not model.training
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std))


def test_checkpoint_roundtrip_into_cb_twin(tmp_path):
    base = build_network(tiny_spec(seed=3))
    path = tmp_path / "base.pth"
    torch.save({"model": {f"module.{k}": v for k, v in base.state_dict().items()}}, path)
    model = load_model(tiny_spec(name="x", cb=True, weights="file", checkpoint=str(path), seed=9))
    assert model.weights_digest == weights_digest(base)
    assert sum(type(m).__name__ == "ContextBroadcast" for m in model.modules()) == 2


def test_adhoc_model_with_checkpoint(tmp_path):
    net = build_network(ModelSpec(name="b", arch="deit_tiny_patch16_224", weights="random", seed=1))
    path = tmp_path / "deit.pth"
    torch.save(net.state_dict(), path)
    model = load_model(f"timm:deit_tiny_patch16_224+cb@{path}")
    assert model.spec.cb and model.weights_digest == weights_digest(net)


def test_wrong_shapes_name_the_keys(tmp_path):
    other = build_network(tiny_spec(arch_kwargs=tuple(sorted({**TINY, "num_classes": 7}.items()))))
    path = tmp_path / "seven.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"mis-shaped: head\.bias: checkpoint \(7,\) vs model \(10,\)"):
        load_model(tiny_spec(weights="file", checkpoint=str(path)))


def test_missing_and_unsafe_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model(tiny_spec(weights="file", checkpoint=str(tmp_path / "nope.pth")))
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": build_network(tiny_spec()).state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(tiny_spec(weights="file", checkpoint=str(path)))
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_model(tiny_spec(weights="file", checkpoint=str(path)))


def test_timm_weights_offline_give_one_clear_message():
    with pytest.raises(FileNotFoundError, match=r"not available offline.*timm:deit_tiny_patch16_224@"):
        load_model("deit_tiny")


def test_spec_identity_ignores_names_but_not_the_network():
    assert tiny_spec().identity() == tiny_spec(name="other", description="x").identity()
    assert tiny_spec().identity() != tiny_spec(cb=True).identity()
    assert isinstance(load_model(tiny_spec()), Normalized)


def test_zoo_cb_twin_loads_its_checkpoint_from_the_checkpoint_dir(tmp_path):
    spec = MODELS.get("deit_tiny_cb")
    assert spec.baseline == "deit_tiny" and spec.cb
    with pytest.raises(FileNotFoundError, match=r"deit_tiny_cb\.pth.*timm:deit_tiny_patch16_224\+cb@"):
        load_model(spec, checkpoint_dir=tmp_path)
    net = build_network(ModelSpec(name="b", arch="deit_tiny_patch16_224", weights="random", seed=4))
    torch.save(net.state_dict(), tmp_path / "deit_tiny_cb.pth")
    model = load_model(spec, checkpoint_dir=tmp_path)
    assert model.weights_digest == weights_digest(net)


def test_url_weights_are_downloaded_once_and_verified(tmp_path):
    import hashlib

    net = build_network(ModelSpec(name="b", arch="deit_tiny_patch16_224", weights="random", seed=5))
    source = tmp_path / "published.pth"
    torch.save(net.state_dict(), source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="sha256"):
        parse_adhoc("timm:deit_tiny_patch16_224@https://example.invalid/w.pth")
    with pytest.raises(ValueError, match="64 hex digits"):  # a prefix is no checksum (one digit used to pass)
        parse_adhoc(f"timm:deit_tiny_patch16_224@https://example.invalid/weights/published.pth#sha256={digest[:1]}")
    url = f"https://example.invalid/weights/published.pth#sha256={digest}"
    spec = parse_adhoc(f"timm:deit_tiny_patch16_224@{url}")
    with pytest.raises(FileNotFoundError, match=r"downloads/published\.pth yourself"):
        load_model(spec, checkpoint_dir=tmp_path / "ckpt")  # offline: one clear message
    (tmp_path / "ckpt" / "downloads").mkdir(parents=True, exist_ok=True)
    (tmp_path / "ckpt" / "downloads" / "published.pth").write_bytes(source.read_bytes())
    assert load_model(spec, checkpoint_dir=tmp_path / "ckpt").weights_digest == weights_digest(net)
    bad = parse_adhoc(f"timm:deit_tiny_patch16_224@https://example.invalid/weights/published.pth#sha256={'0' * 64}")
    with pytest.raises(CheckpointError, match="expected 0000"):
        load_model(bad, checkpoint_dir=tmp_path / "ckpt")
