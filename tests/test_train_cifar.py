"""CIFAR-10/100 from a data root: training split, eval split, training the CIFAR models, missing data.

No download: a tiny fake root in torchvision's on-disk format (pickled dicts, 3072 uint8
values per image, channel-major) is written to tmp_path. The real files are Python 2
pickles whose byte-string keys torchvision decodes with ``encoding="latin1"`` into str
keys ("data", "labels"/"fine_labels"), so the fake files use those str keys. torchvision
also checks each file's md5 against the real release; the fake files cannot match it, so
the tests replace only that check with an existence check (``fake_md5``), and
``test_missing_or_corrupt_root_names_the_expected_tree_and_the_fix`` shows the real check
rejecting them.
"""
from __future__ import annotations

import dataclasses
import os
import pickle

import numpy as np
import pytest
import torch

from cbbench.cli import main
from cbbench.data.registry import load_dataset
from cbbench.data.downstream import _load_cached
from cbbench.errors import DatasetMissingError
from cbbench.models.zoo import MODELS
from cbbench.suites import SUITES
from cbbench.train import RECIPES, Recipe, load_train_split, random_hflip, train

N_TRAIN, N_TEST = 5 * 24, 30  # CIFAR-10: 5 training batches of 24 images

if "test_cifar10_two_epochs" not in RECIPES:
    RECIPES.register("test_cifar10_two_epochs", dataclasses.replace(
        RECIPES.get("cifar10_tiny"), epochs=2, batch_size=32, warmup_epochs=1))


def _images(n: int, seed: int) -> np.ndarray:
    """Digits as colour pictures on random backgrounds (learnable), flattened CHW: (n, 3072) uint8."""
    from cbbench.data.digits import load_digits_split

    rng = np.random.default_rng(seed)
    x, y = load_digits_split("train")
    strokes = x[:n].numpy()  # (n, 3, 32, 32) in [0, 1]
    colour = rng.uniform(0.3, 1, (n, 3, 1, 1))
    background = rng.uniform(0, 0.3, (n, 3, 1, 1))
    pixels = np.clip(background + strokes * colour, 0, 1) * 255
    return pixels.round().astype(np.uint8).reshape(n, 3072), y[:n].numpy()


def _dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_fake_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data, labels = _images(N_TRAIN + N_TEST, 0)
    per = N_TRAIN // 5
    for i in range(5):
        part = slice(i * per, (i + 1) * per)
        _dump({"batch_label": f"training batch {i + 1} of 5", "labels": labels[part].tolist(), "data": data[part],
               "filenames": [f"img{j}.png" for j in range(per)]}, folder / f"data_batch_{i + 1}")
    _dump({"batch_label": "testing batch 1 of 1", "labels": labels[N_TRAIN:].tolist(), "data": data[N_TRAIN:],
           "filenames": [f"t{j}.png" for j in range(N_TEST)]}, folder / "test_batch")
    _dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                           "truck"], "num_cases_per_batch": per, "num_vis": 3072}, folder / "batches.meta")
    return data, labels


def write_fake_cifar100(root):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (40 + 20, 3072), dtype=np.uint8)
    fine = rng.integers(0, 100, 60)
    for name, part in (("train", slice(0, 40)), ("test", slice(40, 60))):
        _dump({"filenames": [], "batch_label": name, "fine_labels": fine[part].tolist(),
               "coarse_labels": (fine[part] // 5).tolist(), "data": data[part]}, folder / name)
    _dump({"fine_label_names": [f"class{i}" for i in range(100)],
           "coarse_label_names": [f"super{i}" for i in range(20)]}, folder / "meta")
    return data, fine


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_root")
    return root, write_fake_cifar10(root), write_fake_cifar100(root)


@pytest.fixture
def fake_md5(monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def test_train_split_is_read_as_uint8_chw_with_its_labels(fake_root, fake_md5):
    root, (data10, labels10), (data100, fine100) = fake_root
    x, y = load_train_split("cifar10", root)
    assert x.shape == (N_TRAIN, 3, 32, 32) and x.dtype == torch.uint8
    assert y.dtype == torch.int64 and y.tolist() == labels10[:N_TRAIN].tolist()
    assert torch.equal(x.reshape(N_TRAIN, 3072), torch.from_numpy(data10[:N_TRAIN]))  # CHW, as pickled
    x, y = load_train_split("cifar100", str(root))
    assert x.shape == (40, 3, 32, 32) and x.dtype == torch.uint8 and y.tolist() == fine100[:40].tolist()


def test_eval_datasets_are_the_test_splits_as_unit_floats(fake_root, fake_md5):
    root, (data10, labels10), (_, fine100) = fake_root
    ds = load_dataset("cifar10", root)
    assert (ds.name, len(ds), ds.num_classes) == ("cifar10", N_TEST, 10)
    x, y, idx = next(ds.batches(8))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, torch.from_numpy(data10[N_TRAIN:N_TRAIN + 8]).reshape(8, 3, 32, 32).float() / 255)
    assert y.tolist() == labels10[N_TRAIN:N_TRAIN + 8].tolist() and idx.tolist() == list(range(8))
    ds = load_dataset("cifar100", root)
    assert (ds.name, len(ds), ds.num_classes) == ("cifar100", 20, 100)
    assert ds.labels.tolist() == fine100[40:].tolist()


def test_cifar_training_is_deterministic_and_reaches_load_model_with_the_data_root(fake_root, fake_md5, tmp_path):
    from cbbench import load_model  # trains on first use
    from cbbench.train import checkpoint_path

    root = fake_root[0]
    spec = dataclasses.replace(MODELS.get("cifar10_vit_cb"), name="t", recipe="test_cifar10_two_epochs")
    model = load_model(spec, checkpoint_dir=tmp_path / "ckpt", data_root=root)  # trains on first use
    first = torch.load(checkpoint_path(spec, tmp_path / "ckpt"), weights_only=True)
    second = torch.load(train(spec, tmp_path / "again.pth", data_root=root), weights_only=True)
    assert [e["epoch"] for e in first["log"]] == [1, 2] and first["recipe"]["hflip"] is True
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    with torch.no_grad():
        logits = model(load_dataset("cifar10", root).images[:4].float() / 255)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


def test_hflip_mirrors_about_half_the_images_reproducibly():
    x = torch.arange(64 * 3 * 2 * 4, dtype=torch.float32).reshape(64, 3, 2, 4)
    out = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    assert all(f or torch.equal(o, i) for f, o, i in zip(flipped, out, x)) and 16 < sum(flipped) < 48
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(0)))


def test_missing_or_corrupt_root_names_the_expected_tree_and_the_fix(tmp_path, fake_root):
    with pytest.raises(DatasetMissingError, match=r"needs a data root.*DIR/cifar-10-batches-py.*--data-root"):
        load_train_split("cifar10", None)
    with pytest.raises(DatasetMissingError, match=r"cifar-100-python.*CBBENCH_DATA"):
        load_dataset("cifar100", None)
    with pytest.raises(DatasetMissingError) as err:
        load_train_split("cifar10", tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "--data-root" in str(err.value)
    spec = dataclasses.replace(MODELS.get("cifar100_vit"), name="t")
    with pytest.raises(DatasetMissingError, match="cannot train t .recipe cifar100_tiny.*cifar-100-python"):
        train(spec, tmp_path / "t.pth")
    # The fake files do not carry the real release's md5: torchvision's own check rejects them.
    _load_cached.cache_clear()  # earlier tests loaded them with the check replaced
    with pytest.raises(DatasetMissingError, match="corrupted"):
        load_dataset("cifar10", fake_root[0])


def test_paper_cifar_suites_mirror_the_paper_suite():
    for n in (10, 100):
        suite = SUITES.get(f"paper_cifar{n}")
        paper = SUITES.get("paper")
        assert suite.dataset == f"cifar{n}" and suite.tasks == paper.tasks
        assert len(suite.models) == len(paper.models) == 20  # 5 training seeds per arm, as on the digits
        for name in suite.models:
            spec = MODELS.get(name)
            assert spec.dataset == suite.dataset and spec.recipe == f"cifar{n}_tiny"
            assert dict(spec.arch_kwargs)["num_classes"] == n and dict(spec.arch_kwargs)["patch_size"] == 4
        assert sum(MODELS.get(m).cb for m in suite.models) == 10
        assert sorted(MODELS.get(m).seed for m in suite.models) == sorted(MODELS.get(m).seed for m in paper.models)


def test_cli_without_data_root_skips_cells_and_train_says_what_to_do(tmp_path, capsys):
    code = main(["run", "--suite", "paper_cifar10", "--models", "cifar10_vit", "cifar10_vit_cb", "--tasks", "clean",
                 "--checkpoints", str(tmp_path / "ckpt"), "--results", str(tmp_path / "results")])
    out = capsys.readouterr()
    assert code == 1 and "0 computed, 0 reused from the store, 2 skipped, 0 failed" in out.out
    assert "nothing was measured: every cell was skipped (clean / cifar10_vit:" in out.err
    md = (tmp_path / "results" / "paper_cifar10.md").read_text()
    assert "`clean` on `cifar10_vit_cb`: **skipped**" in md and "cifar-10-batches-py" in md
    assert "--data-root" in md
    code = main(["train", "cifar10_vit", "--checkpoints", str(tmp_path / "ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot train cifar10_vit" in err and "--data-root" in err


def test_cli_train_reads_the_data_root(fake_root, fake_md5, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(RECIPES._items, "cifar10_tiny", Recipe(dataset="cifar10", epochs=1, batch_size=64,
                                                               max_shift=4, hflip=True))
    code = main(["train", "cifar10_vit", "--data-root", str(fake_root[0]), "--checkpoints", str(tmp_path),
                 "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0 and "cifar10_vit epoch 1/1: loss" in out.err and "cifar10_vit: trained" in out.out
