"""Suite files (`cbbench run --suite my.yaml`), `ls tasks --params`, `--log-samples` and the tracker flags."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from cbbench.cli import main
from cbbench.store import Store
from cbbench.suite_file import read_suite_file, task_from_entry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_suite.yaml"
# Seeded untrained networks of the demo ViT's shape: nothing to train, seconds to evaluate.
MODELS = """models:
  - {name: rand_vit, like: demo_vit, weights: random}
  - {name: rand_vit_cb, like: demo_vit_cb, weights: random}
"""


def run_cli(capsys, *args):
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def write(tmp_path, text: str, name: str = "my.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_example_suite_file_parses():
    for path in EXAMPLE.parent.glob("*.yaml"):
        assert read_suite_file(path).models, path


def test_example_suite_file_parses_with_its_parameters():
    suite = read_suite_file(EXAMPLE)
    assert suite.name == "my_suite" and suite.dataset == "digits" and suite.models == ("demo_vit", "demo_vit_cb")
    pgd, corruptions = (task_from_entry(t) for t in suite.tasks[1:])
    assert (pgd.name, pgd.eps, pgd.steps, pgd.step_size) == ("pgd", "2/255", 20, "0.25/255")
    assert corruptions.name == "corruptions_torch" and corruptions.corruptions == ("gaussian_noise", "fog")
    assert corruptions.severities == (3,) and corruptions.engine == "cbbench-torch"
    assert pgd.params() != task_from_entry("pgd").params()  # hence another cell key


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    """One run of a suite file with overridden task parameters and --log-samples (about 15 s)."""
    root = tmp_path_factory.mktemp("suite_file")
    path = write(root, "name: smoke_file\ndataset: digits\n" + MODELS + """tasks:
  - clean
  - pgd: {eps: 2/255, steps: 2, step_size: 1/255}
  - corruptions_torch: {severities: [3], names: [fog]}
""")
    code = main(["run", "--suite", str(path), "--limit", "8", "--results", str(root / "results"), "--log-samples"])
    assert code == 0
    return root, path


def test_suite_file_runs_and_its_parameters_enter_the_cells(suite_run):
    root, _ = suite_run
    results = root / "results"
    md = (results / "smoke_file.md").read_text()
    assert "`pgd` v1: PGD Linf eps=2/255, 2 steps" in md  # the protocol of the cell, not the default's
    with Store(results) as store:
        cells = {(c.model, c.task): c for c in store.run_cells(store.latest_run("smoke_file")[0])}
    assert set(cells) == {(m, t) for m in ("rand_vit", "rand_vit_cb") for t in ("clean", "pgd", "corruptions_torch")}
    assert cells[("rand_vit", "pgd")].task_params["eps"] == "2/255"
    assert cells[("rand_vit", "pgd")].task_params["steps"] == 2
    assert cells[("rand_vit", "corruptions_torch")].task_params["corruptions"] == ["fog"]
    assert "fog.3.correct" in cells[("rand_vit", "corruptions_torch")].samples


def test_report_takes_the_suite_file_for_its_name(suite_run, capsys):
    root, path = suite_run
    code, out, err = run_cli(capsys, "report", "--suite", str(path), "--results", str(root / "results"))
    assert code == 0 and "smoke_file.md" in out, err


def test_other_parameters_are_other_cells(suite_run, capsys):
    root, path = suite_run
    results = str(root / "results")
    code, out, _ = run_cli(capsys, "run", "--suite", str(path), "--limit", "8", "--results", results)
    assert code == 0 and "0 computed, 6 reused" in out
    path.write_text(path.read_text().replace("eps: 2/255", "eps: 1/255"))
    try:
        code, out, _ = run_cli(capsys, "run", "--suite", str(path), "--limit", "8", "--results", results)
    finally:
        path.write_text(path.read_text().replace("eps: 1/255", "eps: 2/255"))
    assert code == 0 and "2 computed, 4 reused" in out


def test_log_samples_writes_one_jsonl_per_cell(suite_run, capsys):
    root, _ = suite_run
    folder = root / "results" / "samples" / "smoke_file"
    rows = [json.loads(line) for line in (folder / "rand_vit_cb__pgd.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and [r["index"] for r in rows] == list(range(8))
    for key in ("model", "task", "index", "label", "pred", "correct", "confidence", "clean_correct"):
        assert key in rows[0]
    assert rows[0]["correct"] == (rows[0]["pred"] == rows[0]["label"])
    corrupted = json.loads((folder / "rand_vit__corruptions_torch.jsonl").read_text().splitlines()[0])
    assert corrupted["label"] == rows[0]["label"] and "fog.3.pred" in corrupted  # label from the clean cell
    (folder / "rand_vit__clean.jsonl").unlink()
    code, out, _ = run_cli(capsys, "report", "--results", str(root / "results"), "--suite", "smoke_file",
                           "--log-samples", "--format", "md")
    assert code == 0 and (folder / "rand_vit__clean.jsonl").is_file() and "rand_vit__clean.jsonl" in out


def test_a_model_that_is_not_cb_is_paired_with_the_baseline_it_names(tmp_path, capsys):
    path = write(tmp_path, "dataset: digits\nmodels:\n  - {name: rand_vit, like: demo_vit, weights: random}\n"
                           "  - {name: other_init, like: demo_vit, weights: random, seed: 1, baseline: rand_vit}\n"
                           "tasks: [clean]\n")
    code, _, err = run_cli(capsys, "run", "--suite", str(path), "--results", str(tmp_path / "r"), "--limit", "16")
    assert code == 0, err
    report = (tmp_path / "r" / "my.md").read_text()
    assert "other_init − rand_vit" in report and "model fixes / breaks" in report and "(CB)" not in report


def test_a_network_change_from_a_suite_file_is_built_and_paired(tmp_path, capsys):
    path = write(tmp_path, "dataset: digits\nmodels:\n  - {name: base, like: demo_vit, weights: random}\n"
                           "  - {name: ls, like: demo_vit, weights: random, arch_kwargs: {init_values: 0.1}, "
                           "baseline: base}\ntasks: [clean]\n")
    spec = read_suite_file(path).models[1]
    assert dict(spec.arch_kwargs)["init_values"] == 0.1 and dict(spec.arch_kwargs)["depth"] == 4  # like's, plus yours
    other = read_suite_file(write(tmp_path, "dataset: digits\nmodels: [{name: r, like: demo_vit, weights: random, "
                                            "arch: resnet18}]\ntasks: [clean]\n", "other.yaml")).models[0]
    assert other.arch == "resnet18" and dict(other.arch_kwargs) == {"num_classes": 10}  # not the ViT's depth, dims
    trained = read_suite_file(write(tmp_path, path.read_text().replace("ls, like: demo_vit, weights: random",
                                                                       "ls, like: demo_vit, weights: train"),
                                    "trained.yaml")).models[1]
    from cbbench.models.zoo import MODELS
    from cbbench.train import checkpoint_path

    # trained by cbbench with demo_vit's recipe on first use, into a checkpoint of its own
    assert trained.weights == "train" and trained.recipe == MODELS.get("demo_vit").recipe
    assert checkpoint_path(trained, tmp_path) != checkpoint_path(MODELS.get("demo_vit"), tmp_path)
    code, _, err = run_cli(capsys, "run", "--suite", str(path), "--results", str(tmp_path / "r"), "--limit", "8")
    assert code == 0, err
    assert "ls − base" in (tmp_path / "r" / "my.md").read_text()
    path.write_text(path.read_text().replace("init_values", "init_valuez"))
    code, _, err = run_cli(capsys, "run", "--suite", str(path), "--results", str(tmp_path / "r"), "--limit", "8")
    assert code == 2 and "unexpected keyword argument 'init_valuez'; fix its arch_kwargs" in err
    path.write_text(path.read_text().replace("init_valuez: 0.1", "embed_dim: -64"))
    code, _, err = run_cli(capsys, "run", "--suite", str(path), "--results", str(tmp_path / "r"), "--limit", "8")
    assert code == 2 and "negative dimension" in err and "fix its arch_kwargs" in err
    cnn = write(tmp_path, "dataset: digits\nmodels: [{name: r, like: demo_vit, weights: random, arch: resnet18, "
                          "cb: true}]\ntasks: [clean]\n", "cnn.yaml")
    code, _, err = run_cli(capsys, "run", "--suite", str(cnn), "--results", str(tmp_path / "r"), "--limit", "8")
    assert code == 2 and "model r: ResNet has no 'blocks'" in err and "unexpected" not in err


@pytest.mark.parametrize("text, message", [
    ("dataset: digits\nmodel: [demo_vit]\ntasks: [clean]\n", "unknown key 'model'. Did you mean 'models'?"),
    ("dataset: digits\ntasks: [clean]\n", "missing key 'models'"),
    ("dataset: digts\nmodels: [demo_vit]\ntasks: [clean]\n", "Did you mean 'digits'"),
    ("dataset: digits\nmodels: [demo_vti]\ntasks: [clean]\n", "unknown model 'demo_vti'"),
    ("dataset: digits\nmodels: [my.pth]\ntasks: [clean]\n", "like: ZOO_MODEL, checkpoint: my.pth"),
    ("dataset: digits\nmodels: [{name: x, like: demo_vit, chekpoint: a.pth}]\ntasks: [clean]\n",
     "unknown key(s) ['chekpoint']"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [clen]\n", "tasks[0]: unknown task 'clen'. Did you mean 'clean'"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{pgd: {epss: 2/255}}]\n",
     "unknown parameter 'epss' for task pgd. Did you mean 'eps'?"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{pgd: {steps: many}}]\n", "pgd.steps: expected a whole number"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{pgd: {steps: 0}}]\n", "pgd.steps: must be at least 1"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{pgd: {eps: 2}}]\n", "did you mean 2/255?"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{pgd: {eps: 2/0}}]\n", "cannot parse eps='2/0'"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{pgd: {eps: 8/255}}]\n",  # 5 steps of 0.5/255 reach 2.5/255
     "pgd: PGD with eps=8/255 cannot reach the edge of its ε-ball: 5 steps of 0.5/255 move an image at most 2.5/255"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{pgd: {random_start: 1}}]\n", "expected true or false"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{corruptions_torch: {severities: 3}}]\n",
     "expected a non-empty list"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{corruptions_torch: {severities: [6]}}]\n",
     "severities go from 1 to 5"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{corruptions_torch: {names: [fogg]}}]\n",
     "unknown corruption 'fogg'; did you mean 'fog'?"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [{fgsm: {steps: 3}}]\n", "fgsm takes: eps"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [pgd, {pgd: {eps: 2/255}}]\n", "['pgd'] listed twice"),
    ("name: robustness\ndataset: digits\nmodels: [demo_vit]\ntasks: [clean]\n", "is a built-in suite"),
    ("dataset: digits\nmodels: [{name: x, like: demo_vit, weights: random, checkpoint: a.pth}]\ntasks: [clean]\n",
     "checkpoint given with weights: random; keep one of them"),
    ("dataset: digits\nmodels: [{name: x, like: deit_tiny, weights: train}]\ntasks: [clean]\n",
     "weights: train needs a like model that cbbench trains (a recipe); deit_tiny has none"),
    ("dataset: digits\nmodels: [{name: demo_vit, like: demo_vit, weights: random}]\ntasks: [clean]\n",
     "name 'demo_vit' is a zoo model's; give your model its own name"),
    ("dataset: digits\nmodels: [{name: x, like: demo_vit, weights: random, seed: a}]\ntasks: [clean]\n",
     "seed must be a whole number, not 'a'"),
    ("dataset: digits\nmodels: [{name: a, like: demo_vit, weights: random, baseline: b},\n"
     "  {name: b, like: demo_vit, weights: random, seed: 1, baseline: a}]\ntasks: [clean]\n",
     "the baselines go round in a circle (a -> b -> a)"),
    ("dataset: digits\nmodels: [{name: x, like: demo_vit, weights: random, baseline: x}]\ntasks: [clean]\n",
     "baseline 'x' must name another model of this suite (it is the only one)"),
    ("dataset: digits\nmodels: [{name: x, like: demo_vit, weights: random, arch_kwargs: [1]}]\ntasks: [clean]\n",
     "arch_kwargs must be a mapping of timm.create_model keyword arguments"),
    ("dataset: digits\nmodels: [demo_vit, {name: x, like: demo_vit, weights: random, baseline: demo_vti}]\n"
     "tasks: [clean]\n", "models[1]: baseline 'demo_vti' must name another model of this suite (demo_vit)"),
    ("dataset: digits\nmodels: [demo_vit]\ntasks: [clean\n", "is not valid YAML"),
])
def test_invalid_suite_files_exit_2_naming_file_key_and_fix(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    code, _, err = run_cli(capsys, "run", "--suite", str(path), "--results", str(tmp_path / "r"))
    assert code == 2
    assert f"suite file {path}" in err and message in err, err
    assert not (tmp_path / "r" / "cbbench.sqlite").exists()  # refused before anything ran


def test_a_binary_suite_file_is_named(tmp_path, capsys):
    path = tmp_path / "b.yaml"
    path.write_bytes(b"\xff\xfe\x00binary")
    code, _, err = run_cli(capsys, "run", "--suite", str(path), "--results", str(tmp_path / "r"))
    assert code == 2 and f"suite file {path} is not a text (UTF-8) file" in err


def test_missing_suite_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", "--suite", str(tmp_path / "nope.yaml"))
    assert code == 2 and "not found" in err


def test_ls_tasks_params_fits_the_terminal(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    code, out, _ = run_cli(capsys, "ls", "tasks", "--params")
    assert code == 0
    assert "eps=1/255; steps=5; step_size=0.5/255; random_start=true" in " ".join(out.split())
    assert max(len(line) for line in out.splitlines()) <= 72


def test_trackers_that_are_not_installed_name_the_pip_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of it raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for flag, extra in (("--wandb", "cbbench[wandb]"), ("--tensorboard", "cbbench[tensorboard]")):
        code, _, err = run_cli(capsys, "run", "--tasks", "clean", "--results", str(tmp_path), flag)
        assert code == 2 and f"pip install '{extra}'" in err
    assert not (tmp_path / "cbbench.sqlite").exists()


def test_tensorboard_logs_the_headlines(suite_run):
    pytest.importorskip("torch.utils.tensorboard", reason="needs the tensorboard package (cbbench[tensorboard])",
                        exc_type=ImportError)
    from cbbench.loggers import log_headlines

    root, _ = suite_run
    lines = log_headlines(root / "results", "smoke_file", tensorboard=True)
    assert lines and list((root / "results" / "tensorboard" / "smoke_file" / "rand_vit").glob("events.*"))
