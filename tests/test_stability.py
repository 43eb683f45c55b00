"""The embedded default's answer must not depend on the machine.

Training on CPU runs on one thread, so the core count cannot change the weights (checked
bit for bit); parallel training in worker processes gives the weights of a lone run. The
float kernels of another CPU type do change the weights; the slow test trains the whole
default suite again under ATEN_CPU_CAPABILITY=avx2 and requires the same verdicts
(bench/bench_stability.py records the same comparison with 1 and 2 threads too).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from cbbench.models.zoo import MODELS
from cbbench.train import RECIPES, Recipe, checkpoint_path, train, train_missing

if "test_one_epoch" not in RECIPES:
    RECIPES.register("test_one_epoch", Recipe(dataset="digits", epochs=1))
SPECS = [dataclasses.replace(MODELS.get(name), recipe="test_one_epoch") for name in ("demo_vit", "demo_vit_cb_s1")]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_weights_do_not_depend_on_the_thread_count(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _state(train(SPECS[0], tmp_path / "two.pth"))
        torch.set_num_threads(1)
        one = _state(train(SPECS[0], tmp_path / "one.pth"))
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    assert _equal(one, two)


def test_parallel_training_in_workers_equals_a_lone_run(tmp_path):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores for 2 worker processes")
    epochs = []
    train_missing(SPECS, tmp_path / "pool", progress=lambda total, desc, unit: _Count(epochs, total))
    assert epochs == [len(SPECS)]  # one epoch each, reported through the queue
    for spec in SPECS:
        alone = _state(train(spec, tmp_path / f"{spec.name}.pth"))
        pooled = torch.load(checkpoint_path(spec, tmp_path / "pool"), map_location="cpu", weights_only=True)
        assert _equal(alone, pooled["state_dict"]), spec.name
        assert pooled["trained_on"]["threads"] == 1 and pooled["trained_on"]["cpu_capability"]


class _Count:
    def __init__(self, sink, total):
        self.sink, self.n = sink, 0

    def update(self, k):
        self.n += k

    def close(self):
        self.sink.append(self.n)


def test_a_recipe_change_retrains_instead_of_reusing_the_checkpoint(tmp_path):
    if "test_one_epoch_b" not in RECIPES:
        RECIPES.register("test_one_epoch_b", Recipe(dataset="digits", epochs=1, lr=1e-3))
    other = dataclasses.replace(SPECS[0], recipe="test_one_epoch_b")
    assert checkpoint_path(SPECS[0], tmp_path) != checkpoint_path(other, tmp_path)


def _verdicts(results) -> dict[str, str]:
    return {v["claim"]: v["verdict"] for v in json.loads((results / "robustness.json").read_text())["verdicts"]}


@pytest.mark.slow
def test_default_verdicts_are_the_same_under_other_cpu_kernels(tmp_path):
    """The full default suite (training included) under the machine's kernels and under AVX2: other weights,
    the same verdicts. About 10 minutes on 2 cores: `pytest -m slow`."""
    runs = {}
    for name, env in (("native", {}), ("avx2", {"ATEN_CPU_CAPABILITY": "avx2"})):
        results = tmp_path / name
        subprocess.run([sys.executable, "-m", "cbbench", "run", "--suite", "robustness", "--results", str(results),
                        "--checkpoints", str(tmp_path / f"ckpt-{name}")], check=True, env={**os.environ, **env},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs[name] = results
    digests = [json.loads((r / "robustness.json").read_text())["summary"] for r in runs.values()]
    assert _verdicts(runs["native"]) == _verdicts(runs["avx2"])
    assert digests[0] != digests[1] or torch.backends.cpu.get_cpu_capability() == "AVX2", \
        "the kernels gave identical numbers: this machine cannot test the stability"
