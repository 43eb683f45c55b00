"""cbbench.compat.robustbench: robustbench 1.1.1 works offline through the layer.

Skipped when robustbench is not installed (it is an optional extra, installed with --no-deps).
"""
import importlib.util
import json
import re
import socket
import sys
from pathlib import Path

import pytest
import torch

from cbbench.compat.robustbench import (  # noqa: E402
    expected_checkpoint_paths,
    imagenet_eval_subset,
    import_robustbench,
    installed_version,
    load_local_model,
)

# The real distribution, not an importable folder: torchattacks (a dev dependency) ships a 'robustbench/'.
if installed_version() != "1.1.1":
    pytest.skip(
        f"robustbench 1.1.1 not installed (found: {installed_version()}); it is an optional extra: "
        "pip install -e '.[robustbench]' && pip install --no-deps robustbench==1.1.1",
        allow_module_level=True,
    )

# Smallest CIFAR-10 architecture in robustbench's zoo: WRN-40-2, 2,243,546 parameters.
SMALL = dict(name="Hendrycks2020AugMix_WRN", dataset="cifar10", threat_model="corruptions")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test on any download attempt: robustbench's helpers, gdown, requests, raw sockets."""
    rb = import_robustbench()
    import gdown
    import requests

    calls = []

    def forbidden(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"network access attempted: {args!r:.200}")

    monkeypatch.setattr(rb.utils, "download_gdrive_new", forbidden)
    monkeypatch.setattr(rb.utils, "download_gdrive", forbidden)
    monkeypatch.setattr(gdown, "download", forbidden)
    monkeypatch.setattr(requests.Session, "request", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    yield calls
    assert calls == []


def test_import_through_layer():
    rb = import_robustbench()
    assert rb is sys.modules["robustbench"]
    assert callable(rb.utils.load_model)
    # robustbench.eval imported `from autoattack import AutoAttack`; the alias (or a real one) served it.
    assert hasattr(sys.modules["autoattack"], "AutoAttack")


def test_import_error_names_install_commands(monkeypatch):
    import_robustbench()
    monkeypatch.setitem(sys.modules, "robustbench", None)
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps robustbench==1.1.1")) as info:
        import_robustbench()
    assert "pip install -e '.[robustbench]'" in str(info.value)


def test_import_error_pkg_resources_says_setuptools(monkeypatch):
    import_robustbench()
    # Re-import only the top package and the modules on the pkg_resources path; model_zoo stays cached.
    for mod in ("robustbench", "robustbench.data", "robustbench.loaders"):
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)
    with pytest.raises(ImportError, match=r"setuptools<81"):
        import_robustbench()


def test_imagenet_subset_is_the_fixed_5000():
    ids = imagenet_eval_subset()
    assert len(ids) == 5000
    assert len(set(ids)) == 5000
    bad = [i for i in ids if not re.fullmatch(r"n\d{8}/ILSVRC2012_val_\d{8}\.JPEG", i)]
    assert bad == []
    assert ids[0] == "n09468604/ILSVRC2012_val_00015253.JPEG"  # file order is kept
    helper = Path(importlib.util.find_spec("robustbench").submodule_search_locations[0]) / "helper_files"
    wnids = json.loads((helper / "imagenet_class_to_id_map.json").read_text())
    assert {i.split("/")[0] for i in ids} <= set(wnids)  # every entry is <ImageNet wnid>/<val file>


def test_shipped_5000_list_and_labels_equal_robustbench():
    """cbbench ships a copy of the list (for installs without robustbench) and uses the same labels."""
    from cbbench.data import classes

    assert list(classes.robustbench_imagenet_5000()) == imagenet_eval_subset()
    helper = Path(importlib.util.find_spec("robustbench").submodule_search_locations[0]) / "helper_files"
    assert json.loads((helper / "imagenet_class_to_id_map.json").read_text()) == dict(classes.wnid_to_index())


def test_missing_checkpoint_raises_and_never_downloads(tmp_path, no_network):
    expected = tmp_path / "cifar10" / "corruptions" / "Hendrycks2020AugMix_WRN.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_local_model(**SMALL, model_dir=tmp_path)
    assert str(expected) in str(info.value)
    assert "never downloads" in str(info.value)
    assert not (tmp_path / "cifar10").exists()  # robustbench creates it right before downloading


def test_expected_paths_for_ensembles_and_3d(tmp_path):
    paths = expected_checkpoint_paths("Chen2020Adversarial", dataset="cifar10", threat_model="Linf", model_dir=tmp_path)
    assert paths == [tmp_path / "cifar10" / "Linf" / f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3)]
    # corruptions_3d models live under corruptions/, as in robustbench.utils.load_model.
    paths = expected_checkpoint_paths(SMALL["name"], dataset="cifar10", threat_model="corruptions_3d", model_dir=tmp_path)
    assert paths == [tmp_path / "cifar10" / "corruptions" / "Hendrycks2020AugMix_WRN.pt"]


def test_local_checkpoint_loads(tmp_path, no_network):
    rb = import_robustbench()
    reference = rb.model_zoo.model_dicts[rb.model_zoo.enums.BenchmarkDataset.cifar_10][
        rb.model_zoo.enums.ThreatModel.corruptions
    ][SMALL["name"]]["model"]()
    gen = torch.Generator().manual_seed(1234)
    saved = {}
    for key, value in reference.state_dict().items():
        if value.is_floating_point():
            value = torch.rand(value.shape, generator=gen) * 0.2 + (0.5 if "running_var" in key else -0.1)
        saved[key] = value.clone()
    # Format robustbench.utils.load_model reads: {'state_dict': ...} with DataParallel's 'module.' prefix.
    path = tmp_path / "cifar10" / "corruptions" / "Hendrycks2020AugMix_WRN.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in saved.items()}}, path)

    model = load_local_model(**SMALL, model_dir=tmp_path)

    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 32, 32, generator=gen))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(threat_model="Linfinity"), r"unknown robustbench threat_model 'Linfinity'.*'Linf'.*'L2'"),
        (dict(dataset="cifar-10"), r"unknown robustbench dataset 'cifar-10'.*'cifar10'"),
        (dict(dataset="cifar100", threat_model="L2"), r"no cifar100 models for threat_model 'L2'"),
        (dict(name="Hendrycks2020AugMix_WRM"), r"not in robustbench's cifar10/corruptions model zoo.*Hendrycks2020AugMix_WRN"),
    ],
)
def test_bad_names_give_clear_value_error(tmp_path, no_network, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_local_model(**{**SMALL, **kwargs}, model_dir=tmp_path)


@pytest.mark.parametrize(
    "name, dataset, threat_model",
    [("Debenedetti2022Light_XCiT-S12", "cifar10", "Linf"), ("Standard_R50", "imagenet", "Linf")],
)
def test_hub_only_models_are_refused(tmp_path, no_network, name, dataset, threat_model):
    # robustbench fetches these with timm's / torchvision's pretrained=True, whatever is on disk.
    with pytest.raises(ValueError, match="never downloads"):
        load_local_model(name, dataset=dataset, threat_model=threat_model, model_dir=tmp_path)


# ----------------------------------------------------------------------------- RobustBench entries as zoo rows

def test_robustbench_zoo_row_loads_its_local_checkpoint_and_preprocessing(tmp_path, no_network):
    from cbbench.models.build import load_model

    rb = import_robustbench()
    enums = rb.model_zoo.enums
    reference = rb.model_zoo.model_dicts[enums.BenchmarkDataset.imagenet][enums.ThreatModel.corruptions][
        "Hendrycks2020AugMix"]["model"]()
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=gen) * 0.02 if v.is_floating_point() and "running_var" not in k else v
             for k, v in reference.model.state_dict().items()}
    path = tmp_path / "robustbench" / "imagenet" / "corruptions" / "Hendrycks2020AugMix.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": state}, path)

    model = load_model("rb_augmix_r50", checkpoint_dir=tmp_path)
    assert model.spec.weights == "robustbench" and model.spec.mean == (0.0, 0.0, 0.0)  # it normalizes inside
    reference.model.load_state_dict(state)
    x = torch.rand(2, 3, 224, 224, generator=gen)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    steps = [type(t).__name__ for t in model.eval_transform.transforms]
    assert steps == ["Resize", "CenterCrop", "ToTensor"]  # the entry's own Res256Crop224
    assert model.eval_transform.transforms[0].size == 256


def test_robustbench_rows_without_their_file_name_the_exact_path(tmp_path, no_network):
    from cbbench.models.build import load_model
    from cbbench.models.spec import parse_adhoc

    expected = tmp_path / "robustbench" / "imagenet" / "Linf" / "Mo2022When_ViT-B.pt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(expected))):
        load_model("rb_mo2022_vit_b", checkpoint_dir=tmp_path)
    spec = parse_adhoc("robustbench:imagenet/Linf/Mo2022When_Swin-B")
    assert (spec.arch, spec.checkpoint, spec.weights) == ("Mo2022When_Swin-B", "imagenet/Linf", "robustbench")
    with pytest.raises(ValueError, match="expected robustbench:DATASET/THREAT/NAME"):
        parse_adhoc("robustbench:Mo2022When_Swin-B")
