"""Reliability: run history, store integrity, whole report files, and exit codes for hostile input.

Runs use demo models with random weights (``random_checkpoints``): nothing trains, and what is
tested does not depend on the weights.
"""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from cbbench.models.zoo import MODELS
from cbbench.errors import StoreError
from cbbench.store import SCHEMA_VERSION, Store, _sqlite_errors
from cbbench.tasks import TASKS
from tests.conftest import run_cli as cli

IDENT = dict(model="m", model_spec={"name": "m"}, weights_digest="w", task="clean", task_version=1,
             task_params={}, dataset="digits", limit=None, seed=0)


def leaderboard(markdown: str) -> str:
    return markdown.split("## Leaderboard", 1)[1].split("\n## ", 1)[0]


def fail(monkeypatch, task: str, message: str = "simulated failure") -> None:
    def boom(self, model, ctx):
        raise RuntimeError(f"{message}\nsecond line of the message")
    monkeypatch.setattr(type(TASKS.get(task)), "evaluate", boom)


@pytest.fixture
def good_run(random_checkpoints, tmp_path, capsys):
    """A results folder holding one good run: clean and fgsm on demo_vit, 8 images."""
    results = tmp_path / "results"
    code, _, _ = cli(capsys, "run", "--models", "demo_vit", "--tasks", "clean", "fgsm", "--limit", "8",
                     "--checkpoints", str(random_checkpoints), "--results", str(results))
    assert code == 0
    return results


def rerun(capsys, ckpt, results, *extra):
    return cli(capsys, "run", "--models", "demo_vit", "--tasks", "clean", "fgsm", "--limit", "8",
               "--checkpoints", str(ckpt), "--results", str(results), *extra)


# ----------------------------------------------------------------------------- run history

def test_a_run_whose_cells_all_fail_never_replaces_the_good_report(good_run, random_checkpoints, capsys, monkeypatch):
    good = (good_run / "robustness.md").read_text()
    fail(monkeypatch, "clean")
    fail(monkeypatch, "fgsm")
    code, _, err = rerun(capsys, random_checkpoints, good_run, "--force")
    assert code == 1 and "RuntimeError: simulated failure" in err
    assert "second line" not in err and "Traceback" not in err, "a failed cell is one line without -v"
    md = (good_run / "robustness.md").read_text()
    assert leaderboard(md) == leaderboard(good), "the good numbers stay"
    assert "Run 2 (" in md and "is newer but not shown: none of its 2 cells finished (2 failed)" in md
    with Store(good_run) as store:  # --force's failed attempt did not overwrite the finished cells
        assert [c.status for c in store.run_cells(1)] == ["ok", "ok"]
        assert "second line" in store.failure_traceback(2, "demo_vit", "clean")

    code, out, _ = cli(capsys, "runs", "--results", str(good_run))
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert code == 0 and "shown" in lines["1"] and "failed" in lines["2"] and "shown" not in lines["2"]

    code, _, _ = cli(capsys, "report", "--results", str(good_run), "--run", "2")
    assert code == 0
    md2 = (good_run / "robustness.md").read_text()
    assert "run 2 ·" in md2 and "this run's attempt failed: RuntimeError: simulated failure" in md2
    data = json.loads((good_run / "robustness.json").read_text())
    assert data["run"] == 2 and {p["task"] for p in data["problems"]} == {"clean", "fgsm"}
    code, _, _ = cli(capsys, "report", "--results", str(good_run))
    assert code == 0 and "run 1 ·" in (good_run / "robustness.md").read_text()


def test_a_partly_failed_run_shows_the_latest_finished_cell_of_each_model_and_task(tmp_path):
    with Store(tmp_path) as store:
        first = store.start_run("s", {})
        store.put(key="old", **IDENT, status="ok", metrics={"accuracy": 0.5})
        store.add_run_cell(first, 0, "old", "m", "clean", "ok")
        store.finish_run(first)
        second = store.start_run("s", {})  # new weights (another key) whose evaluation failed
        store.put(key="new", **{**IDENT, "weights_digest": "w2"}, status="failed", reason="RuntimeError: x")
        store.add_run_cell(second, 0, "new", "m", "clean", "failed", "RuntimeError: x")
        store.put(key="other", **{**IDENT, "task": "fgsm"}, status="ok", metrics={"accuracy": 0.1})
        store.add_run_cell(second, 1, "other", "m", "fgsm", "ok")
        store.finish_run(second)
        assert store.latest_run("s")[0] == second  # partly good: it is the latest to show
        shown = store.run_cells(second, fill_in=True)
        assert [(c.key, c.status) for c in shown] == [("old", "ok"), ("other", "ok")]
        assert "this run's attempt failed: RuntimeError: x; shown: the same cell from run 1" == shown[0].note
        exact = store.run_cells(second)
        assert [(c.key, c.status, c.reason) for c in exact][0] == ("new", "failed", "RuntimeError: x")
        store.put(key="other-images", **{**IDENT, "limit": 5}, status="failed", reason="y")
        third = store.start_run("s", {})
        store.add_run_cell(third, 0, "other-images", "m", "clean", "failed", "y")
        assert store.run_cells(third, fill_in=True)[0].status == "failed", "never filled in from other images"


# ----------------------------------------------------------------------------- store integrity

def fingerprint(path):
    """A database's schema and version (its bytes move when SQLite folds its log in), else the file's bytes."""
    try:
        db = sqlite3.connect(path)
        try:
            return db.execute("PRAGMA user_version").fetchone(), db.execute("SELECT sql FROM sqlite_master").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return path.read_bytes()


def test_a_store_from_before_run_history_is_migrated(tmp_path):
    db = sqlite3.connect(tmp_path / "cbbench.sqlite")
    from cbbench import store as store_module

    old = store_module.SCHEMA.replace(", status TEXT, reason TEXT, traceback TEXT", "")
    db.executescript(old)
    db.execute("INSERT INTO runs (suite, config, started, finished) VALUES ('s', '{}', 1, 2)")
    db.execute("INSERT INTO run_cells VALUES (1, 0, 'k', 'm', 'clean')")
    db.commit()
    db.close()
    with Store(tmp_path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        store.put(key="k", **IDENT, status="ok", metrics={"accuracy": 1.0})
        assert store.runs()[0].counts == {"ok": 1} and store.latest_run("s")[0] == 1


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(os.urandom(5000)), "is damaged (file is not a database)"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE cells (key TEXT, x INT)"), "is not a cbbench results store"),
    (lambda p: sqlite3.connect(p).execute("CREATE TABLE notes (t TEXT)"), "is not a cbbench results store"),
    (lambda p: (Store(p.parent).close(), sqlite3.connect(p).execute("PRAGMA user_version=99")),
     "written by a newer cbbench (schema 99"),
])
def test_a_damaged_foreign_or_newer_store_is_refused_with_what_to_do(tmp_path, make, message, capsys):
    make(tmp_path / "cbbench.sqlite")
    before = fingerprint(tmp_path / "cbbench.sqlite")
    with pytest.raises(StoreError, match=re.escape(message)):
        Store(tmp_path)
    code, _, err = cli(capsys, "report", "--results", str(tmp_path))
    assert code == 2 and message.split(" (")[0] in err and "Traceback" not in err
    assert fingerprint(tmp_path / "cbbench.sqlite") == before, "refused without changing it"


def test_check_and_repair_rescue_the_readable_cells_of_a_partly_overwritten_store(tmp_path, capsys):
    with Store(tmp_path) as store:
        run = store.start_run("s", {})
        for i in range(40):
            store.put(key=f"k{i}", **IDENT, status="ok", metrics={"i": i},
                      samples={"x": np.random.default_rng(i).random(300)})
            store.add_run_cell(run, i, f"k{i}", "m", "clean", "ok")
        store.finish_run(run)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path = tmp_path / "cbbench.sqlite"
    with open(path, "r+b") as f:  # one page of garbage in the middle of the cells
        f.seek(path.stat().st_size // 2 // 4096 * 4096)
        f.write(np.random.default_rng(9).bytes(4096))
    with pytest.raises(StoreError, match="store repair"):
        Store(tmp_path)
    code, out, _ = cli(capsys, "store", "check", "--results", str(tmp_path))
    assert code == 1 and "malformed" in out
    code, out, _ = cli(capsys, "store", "repair", "--results", str(tmp_path))
    assert code == 0 and "moved the damaged store to" in out
    assert list(tmp_path.glob("cbbench.damaged-*.sqlite"))
    code, out, _ = cli(capsys, "store", "check", "--results", str(tmp_path))
    assert code == 0 and out.strip().endswith(": ok")
    with Store(tmp_path) as store:
        kept = store.db.execute("SELECT key, metrics FROM cells").fetchall()
        assert 30 <= len(kept) < 40, "most cells survive one bad page; the damaged ones are left out"
        for key, metrics in kept:  # every rescued cell is whole
            cell = store.get(key)
            assert json.loads(metrics)["i"] == int(key[1:]) and cell.samples["x"].shape == (300,)
        assert len(store.run_cells(1)) == len(kept)


def test_a_full_disk_is_one_message_and_keeps_the_cells_already_stored(good_run, random_checkpoints, capsys,
                                                                        monkeypatch):
    def full(self, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(Store, "put", _sqlite_errors(full))
    code, _, err = rerun(capsys, random_checkpoints, good_run, "--force")
    assert code == 2 and "is full" in err and "rerun the same command to resume" in err and "Traceback" not in err
    monkeypatch.undo()
    with Store(good_run) as store:
        assert [c.status for c in store.run_cells(1)] == ["ok", "ok"]


# ----------------------------------------------------------------------------- report files

def test_report_files_are_written_whole_or_not_at_all(good_run, capsys, monkeypatch):
    from matplotlib.figure import Figure

    plot = next((good_run / "plots").glob("*.png"))
    before_png, before_md = plot.read_bytes(), (good_run / "robustness.md").read_text()

    def disk_full(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", disk_full)
    code, _, err = cli(capsys, "report", "--results", str(good_run))
    assert code == 2 and "the disk is full" in err and "cbbench report" in err and "Traceback" not in err
    assert plot.read_bytes() == before_png and (good_run / "robustness.md").read_text() == before_md
    assert not list(good_run.rglob("*.tmp")), "no partial files left behind"


def test_a_directory_in_the_reports_place_is_a_clear_error_after_the_cells_are_stored(random_checkpoints, tmp_path,
                                                                                    capsys):
    (tmp_path / "robustness.md").mkdir(parents=True)
    code, _, err = rerun(capsys, random_checkpoints, tmp_path)
    assert code == 2 and "a directory is in its place" in err and "Traceback" not in err
    with Store(tmp_path) as store:
        assert [c.status for c in store.run_cells(1)] == ["ok", "ok"]


def test_undecodable_files_are_listed_in_the_report_and_the_json(tmp_path):
    from cbbench.report import write_reports

    note = "imagenet_clean: 2 corrupt image file(s) skipped, not counted in the accuracy: a.JPEG (x); b.JPEG (y)"
    with Store(tmp_path) as store:
        run = store.start_run("s", {})
        for i, model in enumerate(("demo_vit", "demo_vit_cb")):
            store.put(key=model, **{**IDENT, "model": model, "model_spec": MODELS.get(model).to_dict()}, status="ok",
                      metrics={"accuracy": 0.5}, samples={"correct": np.ones(4, bool)},
                      provenance={"notes": [note]})
            store.add_run_cell(run, i, model, model, "clean", "ok")
        store.finish_run(run)
    write_reports(tmp_path, ["s"], ("md", "json"))
    assert f"- `clean`: {note}" in (tmp_path / "s.md").read_text()
    data = json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data["skipped_files"] == [{"task": "clean", "dataset": "digits", "note": note}], "once, not per model"


# ----------------------------------------------------------------------------- hostile input

BAD = [  # (arguments, environment, exit code, message fragment)
    (["run", "--suite", "robustnes"], {}, 2, "Did you mean 'robustness'"),
    (["run", "--models", "demo_vti"], {}, 2, "Did you mean 'demo_vit'"),
    (["run", "--tasks", "fgms"], {}, 2, "Did you mean 'fgsm'"),
    (["run", "--data-root", "/no/such/dir"], {}, 2, "data root /no/such/dir does not exist"),
    (["run", "--models", "timm:deit small"], {}, 2, "cannot parse ad-hoc model"),
    (["run", "--device", "tpu9"], {}, 2, "unknown device 'tpu9'"),
    (["run", "--models", "timm:deit_tiny_patch16_224@/typo.pth"], {}, 2, "checkpoint /typo.pth not found"),
    (["run", "--models", "timm:deit_tiny_patch16_224@{tmp}"], {}, 2, "not found"),  # a folder
    (["run", "--models", "timm:deit_tiny_patch16_224@{tmp}/zero.pth"], {}, 2, "is empty (0 bytes)"),
    (["run", "--models", "timm:deit_tiny_patch16_224@{tmp}/garbage.pth"], {}, 2, "is not a PyTorch checkpoint"),
    (["run", "--models", "timm:deit_tiny_patch16_224@https://example.org/x.pth#sha256=ab"], {}, 2, "64 hex digits"),
    (["run", "--models", "timm:deit_tiny_patch16_224@https://example.org/x.pth"], {}, 2, "need their sha256"),
    (["run", "--limit", "0"], {}, 2, "argument --limit: must be at least 1, not 0"),
    (["run", "--limit", "-5"], {}, 2, "argument --limit: must be at least 1"),
    (["run", "--limit", "abc"], {}, 2, "argument --limit: expected a whole number"),
    (["run", "--batch-size", "0"], {}, 2, "argument --batch-size: must be at least 1"),
    (["run", "--batch-size", "-4"], {}, 2, "argument --batch-size: must be at least 1"),
    (["run", "--batch-size", "x"], {}, 2, "argument --batch-size: expected a whole number"),
    (["run", "--seed", "-1"], {}, 2, "argument --seed: must be between 0 and 2**63 - 1"),
    (["run", "--seed", str(10 ** 23)], {}, 2, "argument --seed: must be between 0 and 2**63 - 1"),
    (["run", "--amp", "fp8"], {}, 2, "argument --amp: invalid choice"),
    (["run", "--frobnicate"], {}, 2, "unrecognized arguments: --frobnicate"),
    ([], {}, 2, "the following arguments are required"),
    (["run"], {"CBBENCH_STREAM_EVERY_S": "abc"}, 2, "CBBENCH_STREAM_EVERY_S='abc': expected seconds >= 0"),
    (["run"], {"CBBENCH_STREAM_EVERY_S": "-1"}, 2, "CBBENCH_STREAM_EVERY_S='-1'"),
    (["run"], {"CBBENCH_STREAM_EVERY_S": "inf"}, 2, "CBBENCH_STREAM_EVERY_S='inf'"),
    (["run"], {"CBBENCH_CKPT": "/dev/null"}, 2, "checkpoint directory /dev/null (--checkpoints or CBBENCH_CKPT) is "
                                                "not a folder"),
    (["run"], {"CBBENCH_DATA": "/no/such/dir"}, 2, "data root /no/such/dir does not exist"),
    (["run", "--results", "{tmp}/zero.pth"], {}, 2, "cannot open the results store"),
    (["run", "--results", "{tmp}/garbage"], {}, 2, "is damaged (file is not a database)"),
    (["report", "--format", "xml"], {}, 2, "unknown format(s) ['xml']"),
    (["report", "--format", ","], {}, 2, "unknown format(s)"),
    (["report", "--suite", "nope"], {}, 2, "unknown suite 'nope'"),
    (["report", "--run", "999"], {}, 2, "has no run 999"),
    (["report", "--suite", "paper"], {}, 2, "has no results for suite 'paper'; nothing to report"),
    (["report", "--results", ""], {}, 2, "--results is empty"),
    (["run", "--results", " "], {}, 2, "--results is empty"),
    (["run", "--models", "demo_vit", "demo_vit", "--tasks", "clean"], {}, 2, "models: demo_vit listed twice"),
    (["run", "--models", "demo_vit", "--tasks", "clean", "clean"], {}, 2, "tasks: clean listed twice"),
    (["report", "--run", "0"], {}, 2, "argument --run: must be at least 1"),
    (["report", "--run", "abc"], {}, 2, "argument --run: expected a whole number"),
    (["report", "--results", "/no/such/dir"], {}, 2, "no results store in /no/such/dir"),
    (["runs", "--results", "/no/such/dir"], {}, 2, "no results store in /no/such/dir"),
    (["store", "check", "--results", "/no/such/dir"], {}, 2, "no results store at /no/such/dir"),
    (["store", "fix"], {}, 2, "invalid choice: 'fix'"),
    (["ls", "nothing"], {}, 2, "invalid choice: 'nothing'"),
    (["datasets", "check"], {}, 2, "no data root"),
    (["datasets", "check", "--data-root", "/no/such/dir"], {}, 2, "data root /no/such/dir does not exist"),
    (["datasets", "make-c", "--src", ".", "--out", "o", "--batch-size", "0"], {}, 2, "argument --batch-size"),
    (["datasets", "make-c", "--src", ".", "--out", "o", "--limit", "-1"], {}, 2, "argument --limit"),
    (["datasets", "make-c", "--src", ".", "--out", "o", "--severities", "9"], {}, 2, "severity(ies) [9]"),
    (["datasets", "make-c", "--src", ".", "--out", "o", "--corruptions", "fogg"], {}, 2,
     "unknown corruption(s) ['fogg']"),
    # engines have one name everywhere (cell keys, suite files, this option): no CLI-only short names
    (["datasets", "make-c", "--src", ".", "--out", "o", "--engine", "torch"], {}, 2,
     "invalid choice: 'torch' (choose from"),
    *([(["run", "--device", "cuda:7"], {}, 2, "no CUDA GPU")] if not torch.cuda.is_available() else []),
    (["train", "nope_model"], {}, 2, "unknown model 'nope_model'"),
    (["train", "--recipe", "deit"], {}, 2, "--recipe needs --arch"),
    (["train", "--device", "tpu9"], {}, 2, "unknown device 'tpu9'"),
    (["train", "--recipe", "deit", "--arch", "deit_tiny_patch16_224", "--out", "o", "--set", "nope=1"], {}, 2,
     "nope"),
]


def test_hostile_arguments_and_environment_exit_as_promised_and_leave_the_store_intact(good_run, tmp_path, capsys,
                                                                                       monkeypatch):
    (tmp_path / "zero.pth").write_bytes(b"")
    (tmp_path / "garbage.pth").write_bytes(os.urandom(3000))
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "cbbench.sqlite").write_bytes(os.urandom(5000))
    with Store(good_run) as store:
        before = store.db.execute("SELECT key, metrics, samples FROM cells ORDER BY key").fetchall()
    monkeypatch.setenv("CBBENCH_RESULTS", str(good_run))
    assert len(BAD) >= 40
    wrong = []
    for args, env, expected, fragment in BAD:
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            code, _, err = cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
        if code != expected or fragment not in err or "Traceback" in err:
            wrong.append((args, env, code, err[-300:]))
    assert not wrong, "\n".join(map(str, wrong))
    with Store(good_run) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.db.execute("SELECT key, metrics, samples FROM cells ORDER BY key").fetchall() == before


def test_sigterm_and_a_closed_pipe(random_checkpoints, tmp_path):
    env = {**os.environ, "CBBENCH_CKPT": str(random_checkpoints), "CBBENCH_RESULTS": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "cbbench", "run", "--models", "demo_vit", "--tasks", "corruptions",
                             "pgd_strong", "--batch-size", "4"], env=env, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "loading model" not in seen and proc.poll() is None:
        seen += proc.stderr.read(1)
    time.sleep(3)  # into the first cell (minutes long: 75 corruptions of 360 images)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(60) == 143 and "terminated (SIGTERM): finished cells are in the store" in err
    assert "Traceback" not in err

    ls = subprocess.run(f"{sys.executable} -m cbbench ls models | head -1", shell=True, capture_output=True,
                        text=True, env=env)
    assert ls.stdout.startswith("model") and "Traceback" not in ls.stderr and "BrokenPipe" not in ls.stderr


def test_a_dataset_whose_images_are_all_undecodable_says_so(tmp_path):
    from cbbench.tasks.base import TaskContext, run_batches
    from cbbench.tasks.context import RunSettings

    class AllCorrupt:
        name, corrupt, decode_fallbacks = "folder", {0: "a.JPEG: cannot identify image file"}, {}

        def __len__(self):
            return 1

        def batches(self, *args, **kwargs):
            return iter(())

    with pytest.raises(ValueError, match="all 1 image file.* were undecodable .*a.JPEG"):
        run_batches(torch.nn.Identity(), TaskContext(AllCorrupt(), RunSettings(batch_size=4)))


def test_runs_wraps_long_model_lists_to_the_terminal(tmp_path, capsys, monkeypatch):
    models = [f"demo_vit_cb_s{i}" for i in range(1, 5)] + [f"demo_vit_s{i}" for i in range(1, 5)]
    with Store(tmp_path) as store:
        run = store.start_run("robustness", {"models": models, "tasks": ["clean"]})
        store.finish_run(run)
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = cli(capsys, "runs", "--results", str(tmp_path))
    listed = [line for line in out.splitlines() if "demo_vit" in line]
    assert code == 0 and len(listed) > 1, "the models column wraps onto several lines"
    assert all(len(part) <= 20 for line in listed for part in line.split("  ") if "demo_vit" in part)
