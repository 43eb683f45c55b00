"""Faults: a `kill -9` mid-suite, two runs writing one store at once, a task failing midway, out-of-memory forwards.

The runs use the demo models with randomly initialised weights written to the
checkpoint cache (what is tested does not depend on the weights, and nothing is
trained), the embedded digits, and tasks clean + corruptions: the corruptions
cell stores 75 parts, so a run can be caught with finished cells AND a cell in
progress.
"""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from cbbench.data.registry import load_dataset
from cbbench.store import Store
from cbbench.tasks import TASKS
from cbbench.tasks import base as tasks_base
from cbbench.tasks.base import run_batches
from tests.conftest import task_context, tiny_vit

TASK_NAMES = ["clean", "corruptions"]
MODELS = ["demo_vit", "demo_vit_cb"]
ARGS = ["run", "--suite", "robustness", "--models", *MODELS, "--tasks", *TASK_NAMES, "--limit", "4", "--batch-size", "4"]
N_CELLS = len(TASK_NAMES) * len(MODELS)


@pytest.fixture(scope="session")
def checkpoints(random_checkpoints):
    return random_checkpoints


def env(checkpoints) -> dict:
    """One thread (numbers equal the in-process reference's); every finished batch streamed to the store."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CBBENCH_CKPT": str(checkpoints), "CBBENCH_STREAM_EVERY_S": "0"}


def start(results, checkpoints, args=ARGS) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cbbench", *args, "--results", str(results)], env=env(checkpoints),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_in_process(args, results, checkpoints) -> None:
    """An uninterrupted run, in-process with one torch thread like the subprocesses (so numbers match bit for bit)."""
    from cbbench.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*args, "--results", str(results), "--checkpoints", str(checkpoints)]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(checkpoints, tmp_path_factory):
    results = tmp_path_factory.mktemp("reference")
    run_in_process(ARGS, results, checkpoints)
    return results


def latest(results) -> dict:
    """(model, task) -> (metrics, samples) of the latest run, checking that its cells are whole and unique."""
    with Store(results) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        run_id, _ = store.latest_run("robustness")
        cells = store.run_cells(run_id)
        pairs = [(c.model, c.task) for c in cells]
        assert len(pairs) == len(set(pairs)) == N_CELLS, pairs
        assert all(c.status == "ok" for c in cells), [(c.model, c.task, c.status, c.reason) for c in cells]
        assert store.db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == N_CELLS
        assert store.db.execute("SELECT COUNT(*) FROM parts").fetchone()[0] == 0, "parts of finished cells remain"
        return {(c.model, c.task): (c.metrics, c.samples) for c in cells}


def assert_same_results(results, reference) -> None:
    got, want = latest(results), latest(reference)
    assert got.keys() == want.keys()
    for key, (metrics, samples) in want.items():
        assert got[key][0] == metrics, key
        assert got[key][1].keys() == samples.keys(), key
        for name, values in samples.items():
            np.testing.assert_array_equal(got[key][1][name], values, err_msg=f"{key} {name}")
    table = lambda md: md.split("## ")[0].split("\n\n", 2)[2]  # the leaderboard, without timings
    assert table((results / "robustness.md").read_text()) == table((reference / "robustness.md").read_text())


def counts(db_path) -> tuple[int, int, int]:
    """(finished cells, stored parts, finished runs), read without disturbing the writer."""
    if not db_path.is_file():
        return 0, 0, 0
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5) as db:
            return tuple(db.execute(q).fetchone()[0] for q in (
                "SELECT COUNT(*) FROM cells WHERE status='ok'", "SELECT COUNT(*) FROM parts",
                "SELECT COUNT(*) FROM runs WHERE finished IS NOT NULL"))
    except sqlite3.OperationalError:  # the schema is being created
        return 0, 0, 0


def kill_9_when(proc: subprocess.Popen, db_path, ready: Callable[[tuple[int, int, int]], bool], waiting_for: str):
    """SIGKILL ``proc`` as soon as ``ready(counts(db_path))``; fails if it ends first or 240 s pass."""
    deadline = time.monotonic() + 240
    try:
        while not ready(counts(db_path)):
            assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, f"no {waiting_for} after 240 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()


def test_kill_9_mid_suite_then_two_concurrent_reruns_give_the_uninterrupted_results(checkpoints, reference, tmp_path):
    """A run is SIGKILLed with finished cells and a cell in progress; then two processes resume the same suite
    on that store at the same time. Both finish, the store is whole, no cell is duplicated or missing, and
    every number equals the uninterrupted run's (one rerun launch less than testing the two faults apart)."""
    results = tmp_path / "killed"
    proc = start(results, checkpoints)
    # finished cells AND a cell in progress (stored parts)
    kill_9_when(proc, results / "cbbench.sqlite", lambda c: c[0] >= 1 and c[1] >= 1, "finished cell")
    assert proc.returncode == -signal.SIGKILL
    done, parts, finished_runs = counts(results / "cbbench.sqlite")
    assert done < N_CELLS and parts >= 1 and finished_runs == 0, "the kill must land mid-suite, mid-cell"
    with Store(results) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    reruns = [start(results, checkpoints) for _ in range(2)]  # two writers on one store at once
    outs = [p.communicate(timeout=600) for p in reruns]
    for p, (out, err) in zip(reruns, outs):
        assert p.returncode == 0, err[-3000:]
        reused = re.search(r"done in .*: (\d+) computed, (\d+) reused from the store, 0 skipped, 0 failed", out)
        assert reused and int(reused[2]) >= done, f"cells finished before the kill must be reused:\n{out}"
    with Store(results) as store:
        runs = store.db.execute("SELECT run_id FROM runs WHERE finished IS NOT NULL").fetchall()
        assert len(runs) == 2 and all(len(store.run_cells(r[0])) == N_CELLS for r in runs)
    assert_same_results(results, reference)


def test_kill_9_in_the_middle_of_a_cell_then_the_rerun_evaluates_only_the_batches_not_stored(
        checkpoints, tmp_path):
    """clean on all 360 digits in batches of 8: killed once some batches are in the store, the rerun reads
    them back, evaluates the rest, and the cell equals an uninterrupted run's."""
    args = ["run", "--suite", "robustness", "--tasks", "clean", "--models", "demo_vit", "--batch-size", "8"]
    reference = tmp_path / "reference"
    run_in_process(args, reference, checkpoints)

    results = tmp_path / "killed"
    proc = start(results, checkpoints, args)
    kill_9_when(proc, results / "cbbench.sqlite", lambda c: c[1] >= 3, "three stored batches")
    done, stored, _ = counts(results / "cbbench.sqlite")
    assert done == 0 and 3 <= stored < 45, "the kill must land inside the cell's batch loop"

    rerun = start(results, checkpoints, args)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    with Store(results) as store, Store(reference) as ref:
        (cell,) = store.run_cells(store.latest_run("robustness")[0])
        (want,) = ref.run_cells(ref.latest_run("robustness")[0])
        assert store.db.execute("SELECT COUNT(*) FROM parts").fetchone()[0] == 0, "stored batches must be deleted"
    notes = cell.provenance["pipeline"]["notes"]
    resumed = [int(m[1]) for n in notes if (m := re.search(r"resumed an interrupted attempt \((\d+) samples", n))]
    assert resumed and resumed[0] == 8 * stored, notes
    assert cell.metrics == want.metrics
    for name, values in want.samples.items():
        np.testing.assert_array_equal(cell.samples[name], values, err_msg=name)


def fail_forward_at(monkeypatch, n: int, message: str) -> dict:
    """Make the ``n``-th evaluation forward raise ``message``; the returned counts (``n`` forwards so far,
    ``fail_at``) can be reset, e.g. ``calls.update(n=0, fail_at=-1)`` for a rerun that must not fail."""
    original, calls = tasks_base._forward, {"n": 0, "fail_at": n}

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError(message)
        return original(*args, **kwargs)

    monkeypatch.setattr(tasks_base, "_forward", failing_forward)
    return calls


def test_a_task_failing_midway_keeps_earlier_cells_and_parts_and_the_rerun_completes(
        checkpoints, reference, tmp_path, monkeypatch):
    """corruptions on demo_vit raises after some of its 75 parts: the clean cells stay as written, the
    parts stay, the cell is 'failed'; the rerun recomputes only that cell, from where it stopped."""
    from cbbench.runner import RunConfig, run

    config = RunConfig(suite="robustness", models=MODELS, tasks=TASK_NAMES, limit=4, batch_size=4, results=str(tmp_path),
                       checkpoints=str(checkpoints))
    # One forward per cell or part: the 2 clean cells, 9 parts of corruptions on demo_vit, then the failure.
    calls = fail_forward_at(monkeypatch, 2 + 9 + 1, "simulated failure midway")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = run(config)
        status = {(o.model, o.task): o.status for o in first.outcomes}
        assert status == {("demo_vit", "clean"): "ok", ("demo_vit_cb", "clean"): "ok",
                          ("demo_vit", "corruptions"): "failed", ("demo_vit_cb", "corruptions"): "ok"}
        assert "simulated failure midway" in first.failed[0].reason
        with Store(tmp_path) as store:
            before = {row[0]: row[1:] for row in store.db.execute(
                "SELECT key, created, metrics, samples FROM cells WHERE status='ok'")}
            (failed_key,) = [r[0] for r in store.db.execute("SELECT key FROM cells WHERE status='failed'")]
            # One pass over the images for all 75 corruption parts: the 9 evaluated before the failure left
            # their batch's outcomes in the store (streamed when the loop stopped), not yet a named part each.
            stored_parts = store.db.execute(
                "SELECT COUNT(*) FROM parts WHERE cell_key=? AND part LIKE 'batches:%'", (failed_key,)).fetchone()[0]
        assert stored_parts == 9

        calls.update(n=0, fail_at=-1)
        second = run(config)
        assert [o.status for o in second.outcomes].count("cached") == 3 and not second.failed
        task = TASKS.get("corruptions")
        all_parts = len(task.corruptions) * len(task.severities)
        assert calls["n"] == all_parts - stored_parts, "the rerun must resume from the stored parts"
    finally:
        torch.set_num_threads(threads)
    with Store(tmp_path) as store:
        after = {row[0]: row[1:] for row in store.db.execute("SELECT key, created, metrics, samples FROM cells")}
    assert all(after[k] == v for k, v in before.items()), "cells finished before the failure were rewritten"
    from cbbench.report import write_reports

    write_reports(tmp_path, ["robustness"])
    assert_same_results(tmp_path, reference)


# Out-of-memory forwards: the batch is split and the outcomes stay those of an unsplit run.

class PixelModel(nn.Module):
    """Logits from single pixels (exact, whatever the batch size); runs out of memory above ``max_batch``."""

    def __init__(self, max_batch: int | None = None):
        super().__init__()
        self.max_batch, self.sizes = max_batch, []

    def forward(self, x):
        self.sizes.append(len(x))
        if self.max_batch is not None and len(x) > self.max_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} images (simulated)")
        return torch.stack([x[:, c % 3, 4 * c % 32, (8 + 4 * c) % 32] * (c + 1) for c in range(10)], dim=1)


class OOMAbove(nn.Module):
    def __init__(self, net, max_batch):
        super().__init__()
        self.net, self.max_batch = net, max_batch

    def forward(self, x):
        if len(x) > self.max_batch:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return self.net(x)


def digits(limit=20, batch_size=8, **kw):
    return task_context(load_dataset("digits"), limit=limit, batch_size=batch_size, **kw)


def test_out_of_memory_forward_is_split_and_outcomes_are_identical(caplog):
    whole = run_batches(PixelModel(), digits(limit=37, batch_size=16))
    model, ctx = PixelModel(max_batch=3), digits(limit=37, batch_size=16)
    with caplog.at_level("WARNING", logger="cbbench.tasks.base"):
        split = run_batches(model, ctx)
    assert split.keys() == whole.keys()
    for key in whole:
        np.testing.assert_array_equal(split[key], whole[key], err_msg=key)
    # 16 -> 8 -> 4 -> 2 fits; later batches start at 2 instead of running out of memory again
    assert model.sizes[:4] == [16, 8, 4, 2] and max(model.sizes[4:]) == 2 and sum(model.sizes[3:]) == 37
    assert len(ctx.pipeline_notes) == 1 and "forwards of at most 2 images" in ctx.pipeline_notes[0]
    assert sum("ran out of memory" in r.message for r in caplog.records) <= 1


def test_out_of_memory_split_of_a_real_vit_keeps_predictions():
    """A BLAS may round a 3-image matmul differently from a 16-image one: predictions agree, confidences to ~1e-7."""
    net = tiny_vit()
    whole = run_batches(net, digits(limit=40, batch_size=16))
    split = run_batches(OOMAbove(net, 3), digits(limit=40, batch_size=16))
    for key in ("index", "label", "pred", "correct", "correct_top5", "finite"):
        np.testing.assert_array_equal(split[key], whole[key], err_msg=key)
    np.testing.assert_allclose(split["confidence"], whole["confidence"], rtol=1e-5)


def test_out_of_memory_with_one_image_or_with_extras_is_a_clear_error():
    with pytest.raises(torch.OutOfMemoryError, match="single image"):
        run_batches(PixelModel(max_batch=0), digits(limit=4, batch_size=4))
    model = PixelModel(max_batch=2)
    with pytest.raises(torch.OutOfMemoryError, match="smaller --batch-size"):
        run_batches(model, digits(limit=4, batch_size=4), extras=lambda: {"extra": torch.zeros(4)})
    assert model.sizes == [4], "a forward with per-forward extras must not be retried in pieces"


def test_out_of_memory_is_a_failed_cell_with_its_reason_in_the_store(checkpoints, tmp_path, monkeypatch):
    from cbbench.runner import RunConfig, run

    def no_memory(model, x, ctx, may_compile):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    monkeypatch.setattr(tasks_base, "_eval_forward", no_memory)
    summary = run(RunConfig(tasks=["clean"], models=["demo_vit"], limit=4, results=str(tmp_path),
                            checkpoints=str(checkpoints)))
    assert [o.status for o in summary.outcomes] == ["failed"]
    assert "OutOfMemoryError: out of memory in the evaluation forward of a single image" in summary.failed[0].reason


@pytest.mark.parametrize("force", [False, True])
def test_a_rerun_reads_back_the_batches_an_interrupted_cell_stored_unless_forced(checkpoints, tmp_path, monkeypatch,
                                                                                force):
    from cbbench.runner import RunConfig, run

    monkeypatch.setenv("CBBENCH_STREAM_EVERY_S", "0")
    config = RunConfig(suite="robustness", tasks=["clean"], models=["demo_vit"], limit=16, batch_size=4,
                       results=str(tmp_path), checkpoints=str(checkpoints))
    calls = fail_forward_at(monkeypatch, 3, "simulated failure in batch 3 of 4")
    assert [o.status for o in run(config).outcomes] == ["failed"]
    calls.update(n=0, fail_at=-1)
    rerun = run(dataclasses.replace(config, force=force))
    assert [o.status for o in rerun.outcomes] == ["ok"]
    assert calls["n"] == (4 if force else 2), "batches 1-2 are read back, unless --force"
