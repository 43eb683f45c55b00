"""One pass, many cells: tasks that evaluate many perturbations of the same images read each batch once, and
give bit-identical numbers to the per-cell order (one run_batches call per cell, as before issue 20)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from cbbench.corruptions.apply import clear_cache
from cbbench.data.registry import load_dataset
from cbbench.store import Store
from cbbench.tasks import TASKS, TaskContext
from cbbench.tasks import base, calibration, corruptions, epsilon_sweep, imagenet_c_generated
from cbbench.tasks.context import RunSettings
from cbbench.tasks.base import run_batches
from tests.test_imagenet_c_generated import Recorder, ctx_for, val_root  # noqa: F401 (a fixture)
from tests.conftest import task_context
from tests.test_stream import store_context


pytestmark = pytest.mark.usefixtures("one_thread")


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


class CountingDigits:
    """The digits test split, counting how often its batches are read."""

    def __init__(self):
        self.inner, self.reads = load_dataset("digits"), 0
        self.name, self.num_classes = self.inner.name, self.inner.num_classes
        self.corrupt, self.decode_fallbacks = {}, {}

    def __len__(self):
        return len(self.inner)

    def batches(self, *args, **kwargs):
        self.reads += 1
        return self.inner.batches(*args, **kwargs)


def per_cell(monkeypatch, *modules):
    """Make ``modules`` run their cells the way they did before one pass: one run_batches call per cell, in order."""

    def cell_by_cell(model, ctx, perturb=None, desc="", *args, cells=None, **kwargs):
        if cells is None:
            return run_batches(model, ctx, perturb, desc, *args, **kwargs)
        return {d: run_batches(model, ctx, p, d, *args, **kwargs) for d, p in cells.items()}

    for module in modules:
        monkeypatch.setattr(module, "run_batches", cell_by_cell)


def assert_identical(a, b) -> None:
    assert a.metrics.keys() == b.metrics.keys() and a.samples.keys() == b.samples.keys()
    for k in a.metrics:  # bit-identical, NaN included
        assert np.array_equal(a.metrics[k], b.metrics[k], equal_nan=True), k
    for k in a.samples:
        assert a.samples[k].dtype == b.samples[k].dtype, k
        np.testing.assert_array_equal(a.samples[k], b.samples[k], err_msg=k)
    assert a.notes == b.notes


def both_orders(task, model, make_ctx, monkeypatch, *modules):
    """(one-pass result, reads), (per-cell result, reads) of ``task``, each from an empty corruption cache."""
    results = []
    for order in ("one pass", "per cell"):
        clear_cache()
        if order == "per cell":
            per_cell(monkeypatch, *modules)
        ctx = make_ctx()
        results.append((task.evaluate(model, ctx), ctx.dataset.reads if hasattr(ctx.dataset, "reads") else None))
    return results


@pytest.mark.parametrize("task", [
    corruptions.CorruptionTask(engine="cbbench-torch"),  # all 15 x 5
    corruptions.CorruptionTask(corruptions=("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "snow",
                                            "contrast")),  # the reference engine: its random ones, each image seeded
    calibration.CalibrationTask(engine="cbbench-torch", severities=(1, 3, 5)),
], ids=["corruptions_torch", "corruptions_reference", "calibration_torch"])
def test_corruption_tasks_read_each_batch_once_and_give_the_per_cell_numbers(task, monkeypatch):
    model = conv_net()
    (one, reads_one), (ref, reads_ref) = both_orders(
        task, model, lambda: TaskContext(CountingDigits(), RunSettings(batch_size=8, limit=20, seed=3)), monkeypatch,
        corruptions)
    assert_identical(one, ref)
    cells = len(task.corruptions) * len(task.severities) + isinstance(task, calibration.CalibrationTask)
    assert (reads_one, reads_ref) == (1, cells)


@pytest.mark.parametrize("name", ["pgd_sweep", "fgsm_sweep"])
def test_epsilon_sweeps_read_each_batch_once_and_give_the_per_cell_numbers(name, monkeypatch):
    task = dataclasses.replace(TASKS.get(name), epsilons=("0", "1/255", "8/255"))
    model = conv_net()
    (one, reads_one), (ref, reads_ref) = both_orders(
        task, model, lambda: TaskContext(CountingDigits(), RunSettings(batch_size=16, limit=40, seed=3)), monkeypatch,
        epsilon_sweep)
    assert_identical(one, ref)
    assert (reads_one, reads_ref) == (1, 4)  # clean + 3 budgets


def test_generated_imagenet_c_decodes_val_once_for_all_cells_with_the_per_cell_numbers(val_root, monkeypatch):
    task = imagenet_c_generated.GeneratedImageNetCTask(corruptions=("contrast", "gaussian_noise", "snow"),
                                                       holdout=("spatter",), severities=(2, 5))
    model, decoded = Recorder(), []
    real = imagenet_c_generated.imagenet_c_crop

    def counting_crop():  # the transform of the generated cells: count the images it cuts
        crop = real()
        return lambda image: decoded.append(1) or crop(image)

    monkeypatch.setattr(imagenet_c_generated, "imagenet_c_crop", counting_crop)
    one = task.evaluate(model, ctx_for(val_root, seed=5))
    one_pass_decodes = len(decoded)
    clear_cache()
    per_cell(monkeypatch, imagenet_c_generated)
    ref = task.evaluate(Recorder(), ctx_for(val_root, seed=5))
    assert_identical(one, ref)
    assert (one_pass_decodes, len(decoded) - one_pass_decodes) == (3, 3 * 8)  # 3 decodable images, 8 cells


def test_an_interrupted_one_pass_resumes_each_cell_from_its_own_stored_batches(tmp_path):
    """kill -9 in the middle of a pass: each cell's stream keeps its own batches; the rerun evaluates only what
    each cell lacks and gives the uninterrupted outcomes."""
    digits = load_dataset("digits")
    model = conv_net()

    def noisy(scale, seen, fail_at=None):
        def perturb(x, y, batch):
            first = int(batch.index[0])
            if fail_at is not None and first == fail_at:
                raise KeyboardInterrupt  # like a kill: nothing after this batch is computed
            seen.append(first)
            g = torch.Generator().manual_seed(first)
            return (x + scale * torch.randn(x.shape, generator=g)).clamp(0, 1)
        return perturb

    def cells(seen_a, seen_b, fail_at=None):
        return {"clean": None, "a": noisy(0.1, seen_a), "b": noisy(0.3, seen_b, fail_at)}

    want = run_batches(model, TaskContext(digits, RunSettings(batch_size=32, limit=150)), cells=cells([], []))
    for d, p in cells([], []).items():  # each cell as its own loop gives the same outcomes
        got = run_batches(model, TaskContext(digits, RunSettings(batch_size=32, limit=150)), p, desc=d)
        for k in want[d]:
            np.testing.assert_array_equal(got[k], want[d][k])
    with Store(tmp_path) as store:
        seen_a, seen_b = [], []
        with pytest.raises(KeyboardInterrupt):  # cell b dies at its 3rd batch; a has done 3 batches by then
            run_batches(model, store_context(store, digits, batch_size=32, limit=150),
                        cells=cells(seen_a, seen_b, fail_at=64))
        assert (seen_a, seen_b) == ([0, 32, 64], [0, 32])
        seen_a, seen_b = [], []
        got = run_batches(model, store_context(store, digits, batch_size=32, limit=150), cells=cells(seen_a, seen_b))
        assert (seen_a, seen_b) == ([96, 128], [64, 96, 128])
    for d in want:
        assert got[d].keys() == want[d].keys()
        for k in want[d]:
            np.testing.assert_array_equal(got[d][k], want[d][k], err_msg=f"{d}.{k}")


def test_parts_computes_only_the_missing_cells_in_one_call():
    stored = {"a": {"x": np.array([1])}}
    saved, calls = {}, []
    ctx = task_context(None, load_part=stored.get, save_part=saved.__setitem__)

    def compute(todo):
        calls.append(list(todo))
        return {n: {"x": np.array([len(n)])} for n in todo}

    got = ctx.parts(["a", "bb", "ccc"], compute)
    assert calls == [["bb", "ccc"]] and set(saved) == {"bb", "ccc"}
    assert [int(got[n]["x"][0]) for n in ("a", "bb", "ccc")] == [1, 2, 3]


def test_run_batches_takes_perturb_or_cells_not_both():
    with pytest.raises(TypeError, match="either perturb/desc or cells"):
        base.run_batches(conv_net(), TaskContext(load_dataset("digits")), desc="x", cells={"y": None})
