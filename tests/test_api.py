"""cbbench.evaluate: a module built in Python, through the runner, store, cache and report of the CLI."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import cbbench
from tests.conftest import tiny_vit

TASKS = ["clean", {"pgd": {"steps": 2}}]


def test_evaluate_pairs_a_model_with_its_baseline_and_reuses_the_store(tmp_path):
    result = cbbench.evaluate(tiny_vit(cb=True), tiny_vit(), tasks=TASKS, limit=16, results=tmp_path, device="cpu")
    table = result.table
    assert list(table.index) == ["baseline", "model", "Δ model − baseline"]
    assert list(table.columns) == ["clean", "pgd"]
    assert table.loc["Δ model − baseline", "clean"] == pytest.approx(
        table.loc["model", "clean"] - table.loc["baseline", "clean"])
    assert set(result.paired["task"]) == {"clean", "pgd"} and result.paired["mcnemar_p"].dtype == float
    assert result.report_path == tmp_path / "robustness_model.md" and result.report_path.is_file()
    assert "model (CB)" in result.report_path.read_text()
    cell = result.cells[("model", "pgd")]
    assert cell.task_params["steps"] == 2 and cell.model_spec["weights"] == "memory"
    assert {o.status for o in result.outcomes} == {"ok"}

    again = cbbench.evaluate(tiny_vit(cb=True), tiny_vit(), tasks=TASKS, limit=16, results=tmp_path, device="cpu")
    assert {o.status for o in again.outcomes} == {"cached"}
    assert again.table.equals(table)

    changed = tiny_vit(cb=True)
    with torch.no_grad():
        changed.head.bias += 1.0  # other weights: other digest, other cells
    third = cbbench.evaluate(changed, tiny_vit(), tasks=TASKS, limit=16, results=tmp_path, device="cpu")
    assert {(o.model, o.status) for o in third.outcomes} == {("model", "ok"), ("baseline", "cached")}


def test_any_module_with_its_own_preprocessing(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 10))
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
    result = cbbench.evaluate(net, tasks=["clean", "fgsm"], limit=8, results=tmp_path, device="cpu",
                              preprocessing={"mean": (0.1, 0.1, 0.1), "std": (0.3, 0.3, 0.3), "input_size": 16},
                              name="convnet", report_name="mine")
    assert list(result.table.index) == ["convnet"] and result.report_path.name == "mine.md"
    assert set(seen) == {16}  # resized inside, after cbbench's [0,1] images
    spec = result.cells[("convnet", "clean")].model_spec
    assert spec["arch"] == "python:torch.nn.modules.container.Sequential" and spec["mean"] == [0.1, 0.1, 0.1]


def test_a_change_other_than_cb_is_compared_but_not_judged_as_cb(tmp_path):
    """A layer-scale ViT against the plain one: paired differences, no "(CB)" label and no CB claim."""
    result = cbbench.evaluate(tiny_vit(init_values=0.1), tiny_vit(), tasks=["clean"], limit=16, results=tmp_path,
                              device="cpu", name="layerscale")
    assert list(result.table.index) == ["baseline", "layerscale", "Δ layerscale − baseline"]
    report = result.report_path.read_text()
    assert "(CB)" not in report and "CB improves" not in report and "model fixes / breaks" in report
    assert "across training seeds" not in report  # one class, two arms: not "baseline ×2 seeds | 0, 0"
    assert result.cells[("layerscale", "clean")].model_spec["cb"] is False
    cb = cbbench.evaluate(tiny_vit(cb=True), tiny_vit(), tasks=["clean"], limit=16, results=tmp_path, device="cpu")
    assert "model (CB)" in cb.report_path.read_text()  # found from its CB layers
    with pytest.raises(ValueError, match="has cbbench's CB layers; it is the CB side of its pair"):
        cbbench.evaluate(tiny_vit(cb=True), tiny_vit(), tasks=["clean"], limit=16, results=tmp_path, device="cpu",
                         cb=False)
    # a CB module and its plain twin are a CB pair: the claims are judged (one seed pair: no verdict)
    assert json.loads(cb.report_path.with_suffix(".json").read_text())["verdicts"]


def test_one_module_per_training_seed_gives_the_table_across_seeds_and_verdicts(tmp_path):
    cbs, bases = [tiny_vit(cb=True, seed=k) for k in range(3)], [tiny_vit(seed=k) for k in range(3)]
    result = cbbench.evaluate(cbs, bases, tasks=["clean"], limit=16, results=tmp_path, device="cpu")
    assert list(result.table.index)[:3] == ["baseline_s0", "model_s0", "Δ model_s0 − baseline_s0"]
    report = result.report_path.read_text()
    assert re.search(r"\| model_s0 ×3 seeds \(CB\) +\| 0, 1, 2 ", report)
    verdicts = json.loads(result.report_path.with_suffix(".json").read_text())["verdicts"]
    assert any(v["claim"].startswith("CB improves clean accuracy") for v in verdicts)
    with pytest.raises(ValueError, match="3 model.s. and 2 baseline.s.: give one baseline per model"):
        cbbench.evaluate(cbs, bases[:2], tasks=["clean"], limit=4, results=tmp_path, device="cpu")


def test_a_cb_model_without_a_baseline_says_so(tmp_path):
    result = cbbench.evaluate(tiny_vit(cb=True), tasks=["clean"], limit=4, results=tmp_path, device="cpu")
    assert "> model: CB without a baseline in this run" in result.report_path.read_text()


def test_what_is_not_one_arm_of_modules_is_refused_naming_it(tmp_path):
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, not str .a zoo name: cbbench.load_model"):
        cbbench.evaluate("demo_vit", tiny_vit(), tasks=["clean"], limit=4, results=tmp_path, device="cpu")
    with pytest.raises(TypeError, match=r"baseline\[1\] must be a torch.nn.Module, not NoneType"):
        cbbench.evaluate([tiny_vit(seed=1), tiny_vit(seed=2)], [tiny_vit(seed=3), None], tasks=["clean"], limit=4,
                         results=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="some of the models have cbbench's CB layers and some do not"):
        cbbench.evaluate([tiny_vit(cb=True, seed=1), tiny_vit(seed=2)], [tiny_vit(seed=3), tiny_vit(seed=4)],
                         tasks=["clean"], limit=4, results=tmp_path, device="cpu")
    assert not (tmp_path / "cbbench.sqlite").exists()


def test_one_model_twice_is_refused_before_any_work(tmp_path, capsys):
    from tests.conftest import run_cli

    net = tiny_vit()
    with pytest.raises(ValueError, match="model and baseline are the same network with the same weights"):
        cbbench.evaluate(net, net, tasks=["clean"], limit=4, results=tmp_path, device="cpu")
    suite = tmp_path / "twice.yaml"
    suite.write_text("dataset: digits\nmodels:\n  - {name: a, like: demo_vit, weights: random}\n"
                     "  - {name: b, like: demo_vit, weights: random, baseline: a}\ntasks: [clean]\n")
    code, _, err = run_cli(capsys, "run", "--suite", str(suite), "--results", str(tmp_path / "r"))
    assert code == 2 and "models a and b are the same network with the same weights (random weights, seed 0)" in err
    assert not (tmp_path / "cbbench.sqlite").exists() and not (tmp_path / "r" / "cbbench.sqlite").exists()


def test_cells_reused_under_another_name_show_this_run_s_name(tmp_path):
    net = tiny_vit()
    cbbench.evaluate(net, tasks=["clean"], limit=8, results=tmp_path, device="cpu", name="first")
    again = cbbench.evaluate(net, tasks=["clean"], limit=8, results=tmp_path, device="cpu", name="second")
    assert {o.status for o in again.outcomes} == {"cached"} and list(again.table.index) == ["second"]
    assert "| second " in again.report_path.read_text()


def test_a_cbbench_model_is_not_normalized_twice(tmp_path):
    from cbbench.api import prepare
    from cbbench.models.build import Normalized

    net = tiny_vit()
    loaded = Normalized(net, (0.2, 0.3, 0.4), (0.5, 0.6, 0.7))  # what cbbench.load_model returns
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(prepare(loaded, "m", "digits")(x), loaded(x))
    with pytest.raises(ValueError, match="normalizes inside.*twice.*pass its .net"):
        prepare(loaded, "m", "digits", {"mean": (0.5,) * 3})


def test_class_count_mismatch_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"predicts 5 classes but dataset digits has 10.*reset_classifier\(10\)"):
        cbbench.evaluate(tiny_vit(num_classes=5), tasks=["clean"], limit=4, results=tmp_path, device="cpu")
    assert not (tmp_path / "cbbench.sqlite").exists()


def test_bad_task_parameters_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter 'epss' for task pgd"):
        cbbench.evaluate(tiny_vit(), tasks=[{"pgd": {"epss": "2/255"}}], results=tmp_path, device="cpu")


def test_import_cbbench_stays_light():
    code = "import cbbench, sys; assert 'evaluate' in cbbench.__all__; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
