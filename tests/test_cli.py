"""End to end through the command line: the embedded default, caching, resumption and bad input."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from cbbench.cli import main
from cbbench.suites import SUITES
from cbbench.tasks import TASKS
from tests.conftest import run_cli

LIMIT = "24"



def summary_table(markdown: str) -> str:
    """The leaderboard table (the lines up to the first section), which must not depend on timing."""
    return markdown.split("## ")[0].split("\n\n", 2)[2]


@pytest.fixture(scope="module")
def first_run(demo_checkpoints, tmp_path_factory):
    """One real run of the default suite on 24 images (trains the demo models once per session)."""
    results = tmp_path_factory.mktemp("results")
    code = main(["run", "--suite", "robustness", "--limit", LIMIT, "--checkpoints", str(demo_checkpoints),
                 "--results", str(results)])
    assert code == 0
    return results


def test_default_suite_writes_a_leaderboard_with_every_task(first_run):
    md = (first_run / "robustness.md").read_text()
    assert re.search(r"^\| demo_vit +\| 0\.15M", md, re.M)
    assert re.search(r"^\| demo_vit_cb \(CB\)", md, re.M)
    assert re.search(r"^\| Δ vs demo_vit \[95% CI, images\]", md, re.M)
    assert re.search(r"^\| Δ CB − baseline \[95% t-interval across seeds\]", md, re.M)
    assert md.index("## Verdict") < md.index("## Leaderboard across training seeds")
    for header in ("clean top-1 ↑", "corruption acc. (torch engine) ↑", "fgsm robust acc. ↑", "pgd robust acc. ↑",
                   "pgd_strong robust acc. ↑", "attn. entropy (H/log N)"):
        assert header in md
    for task in SUITES.get("robustness").tasks:
        assert f"`{task}` v" in md
    assert "Skipped or failed" not in md
    assert (first_run / "robustness.csv").is_file() and (first_run / "robustness.json").is_file()


def test_trained_demo_models_are_decent(demo_checkpoints):
    from cbbench.data.digits import load_digits_split
    from cbbench import load_model  # trains on first use

    x, y = load_digits_split("test")
    for name in ("demo_vit", "demo_vit_cb"):
        model = load_model(name, checkpoint_dir=demo_checkpoints)
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        assert acc > 0.9, f"{name} reaches only {acc:.1%} on the digits test split"


def test_second_run_reuses_every_cell(first_run, demo_checkpoints, capsys):
    before = summary_table((first_run / "robustness.md").read_text())
    code, out, _ = run_cli(capsys, "run", "--limit", LIMIT, "--checkpoints", str(demo_checkpoints),
                           "--results", str(first_run))
    suite = SUITES.get("robustness")
    n_cells = len(suite.models) * len(suite.tasks)
    assert code == 0 and f"0 computed, {n_cells} reused" in out
    assert summary_table((first_run / "robustness.md").read_text()) == before
    code, out, _ = run_cli(capsys, "run", "--limit", LIMIT, "--checkpoints", str(demo_checkpoints),
                           "--results", str(first_run), "--tasks", "clean", "--force")
    assert code == 0 and f"{len(suite.models)} computed, 0 reused" in out


def test_interrupted_run_resumes_to_the_same_table(first_run, demo_checkpoints, tmp_path, capsys, monkeypatch):
    clean_task = TASKS.get("clean")
    original = type(clean_task).evaluate
    calls = {"n": 0}

    def interrupt_second_call(self, model, ctx):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, model, ctx)

    monkeypatch.setattr(type(clean_task), "evaluate", interrupt_second_call)
    args = ["run", "--limit", LIMIT, "--checkpoints", str(demo_checkpoints), "--results", str(tmp_path),
            "--models", "demo_vit", "demo_vit_cb", "--tasks", "clean", "fgsm"]
    code, _, err = run_cli(capsys, *args)
    assert code == 130 and "rerun the same command to resume" in err
    monkeypatch.setattr(type(clean_task), "evaluate", original)
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "3 computed, 1 reused" in out
    resumed = (tmp_path / "robustness.md").read_text()
    code, _, _ = run_cli(capsys, "run", "--limit", LIMIT, "--checkpoints", str(demo_checkpoints),
                         "--results", str(tmp_path / "fresh"), "--tasks", "clean", "fgsm")
    assert summary_table(resumed) == summary_table((tmp_path / "fresh" / "robustness.md").read_text())


def test_a_failing_task_is_reported_and_the_others_are_kept(demo_checkpoints, tmp_path, capsys, monkeypatch):
    def boom(self, model, ctx):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(type(TASKS.get("attention_entropy")), "evaluate", boom)
    code, _, err = run_cli(capsys, "run", "--limit", "8", "--checkpoints", str(demo_checkpoints),
                           "--results", str(tmp_path), "--tasks", "clean", "attention_entropy")
    assert code == 1 and "simulated failure" in err
    md = (tmp_path / "robustness.md").read_text()
    assert "`attention_entropy` on `demo_vit`: **failed**: RuntimeError: simulated failure" in md
    assert re.search(r"^\| demo_vit +\| 0\.15M +\| \d+\.\d", md, re.M), "clean results must be kept"


def test_wrong_checkpoint_and_wrong_class_count(tmp_path, capsys):
    from cbbench.models.build import build_network
    from cbbench.models.spec import ModelSpec

    net = build_network(ModelSpec(name="x", arch="deit_tiny_patch16_224", weights="random",
                                  arch_kwargs=(("num_classes", 10),)))
    path = tmp_path / "ten.pth"
    torch.save(net.state_dict(), path)
    code, _, err = run_cli(capsys, "run", "--models", f"timm:deit_tiny_patch16_224@{path}")
    assert code == 2 and "head.weight: checkpoint (10, 192) vs model (1000, 192)" in err


def test_unusable_results_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    code, _, err = run_cli(capsys, "run", "--results", str(tmp_path / "file"), "--tasks", "clean")
    assert code == 2 and "cannot open the results store" in err


def test_report_without_results(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", "--results", str(tmp_path))
    assert code == 2 and "no results store" in err


def test_report_rerenders_from_the_store_alone(first_run, tmp_path, capsys):
    before = (first_run / "robustness.md").read_text()
    (first_run / "robustness.md").unlink()
    code, out, _ = run_cli(capsys, "report", "--results", str(first_run), "--format", "md")
    assert code == 0 and (first_run / "robustness.md").read_text() == before
    code, _, err = run_cli(capsys, "report", "--results", str(first_run), "--suite", "paper")
    assert code == 2 and "no results for suite 'paper'" in err  # nothing written: not a success


def test_console_entry_point_lists_registries():
    out = subprocess.run([sys.executable, "-m", "cbbench", "ls", "tasks"], capture_output=True, text=True, check=True)
    for task in ("clean", "corruptions", "fgsm", "pgd", "pgd_strong", "attention_entropy"):
        assert task in out.stdout


def test_with_a_data_root_the_default_suite_is_the_imagenet_one(tmp_path, capsys):
    """Missing datasets and offline weights make skipped cells with their reasons, never numbers."""
    (tmp_path / "data").mkdir()
    code, out, err = run_cli(capsys, "run", "--data-root", str(tmp_path / "data"), "--results", str(tmp_path / "r"))
    assert code == 1 and "running suite robustness_imagenet" in err and "0 computed" in out
    assert "nothing was measured: every cell was skipped" in err
    md = (tmp_path / "r" / "robustness_imagenet.md").read_text()
    assert "`imagenet_a` on `deit_tiny`: **skipped**: weights unavailable" in md
    assert "not available offline" in md and "| deit_small " in md


def test_datasets_check(tmp_path, capsys):
    (tmp_path / "imagenet-a" / "n01498041").mkdir(parents=True)
    code, out, _ = run_cli(capsys, "datasets", "check", "--data-root", str(tmp_path))
    assert code == 0 and re.search(r"imagenet_a +incomplete", out) and re.search(r"imagenet_val +missing", out)
    code, _, err = run_cli(capsys, "datasets", "check")
    assert code == 2 and "no data root" in err


def test_datasets_make_c_writes_a_tree_and_resumes(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "val"
    for wnid, red in (("n01440764", 30), ("n01443537", 220)):
        (src / wnid).mkdir(parents=True)
        Image.new("RGB", (300, 240), (red, 90, 60)).save(src / wnid / "ILSVRC2012_val_1.JPEG")
    args = ["datasets", "make-c", "--src", str(src), "--out", str(tmp_path / "imagenet-c"),
            "--corruptions", "contrast", "pixelate", "--severities", "1", "5", "--device", "cpu"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "8 files written, 0 already there" in out
    written = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "imagenet-c").rglob("*.JPEG"))
    assert len(written) == 8 and "imagenet-c/pixelate/5/n01443537/ILSVRC2012_val_1.JPEG" in written
    assert Image.open(tmp_path / written[0]).size == (224, 224)
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "0 files written, 8 already there" in out
    code, _, err = run_cli(capsys, *args[:-5], "fogg", "--device", "cpu")
    assert code == 2 and "unknown corruption(s) ['fogg']" in err and "gaussian_noise" in err


def test_make_c_refuses_an_output_inside_its_source_or_a_file(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "val"
    (src / "n01440764").mkdir(parents=True)
    Image.new("RGB", (64, 64), (30, 90, 60)).save(src / "n01440764" / "ILSVRC2012_val_1.JPEG")
    (tmp_path / "a_file").write_text("")
    for out, message in ((src, "overlap"), (src / "c", "overlap"), (tmp_path / "a_file", "is a file")):
        code, _, err = run_cli(capsys, "datasets", "make-c", "--src", str(src), "--out", str(out),
                               "--corruptions", "contrast", "--severities", "1", "--device", "cpu")
        assert code == 2 and message in err and "Traceback" not in err
    assert sorted(p.name for p in src.rglob("*")) == ["ILSVRC2012_val_1.JPEG", "n01440764"]  # nothing written
