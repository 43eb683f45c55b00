"""The results store: whole cells, resumable parts, runs, concurrent writers, clear errors."""
from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

from cbbench.errors import StoreError
from cbbench.store import Store, cell_key

IDENT = dict(model="m", model_spec={"name": "m", "cb": False}, weights_digest="w", task="clean", task_version=1,
             task_params={}, dataset="digits", limit=None, seed=0)


def test_cell_roundtrip_keeps_exact_values(tmp_path):
    samples = {"correct": np.array([True, False, True]), "confidence": np.array([0.1, 0.123456789, 1.0])}
    with Store(tmp_path) as store:
        store.put(key="k", **IDENT, status="ok", metrics={"accuracy": 2 / 3}, samples=samples, wall_s=1.5)
        cell = store.get("k")
        assert store.has("k") and cell.metrics["accuracy"] == 2 / 3
        np.testing.assert_array_equal(cell.samples["confidence"], samples["confidence"])
        assert cell.samples["correct"].dtype == bool


def test_skipped_and_failed_cells_are_not_reused(tmp_path):
    with Store(tmp_path) as store:
        store.put(key="s", **IDENT, status="skipped", reason="data missing")
        store.put(key="f", **IDENT, status="failed", reason="boom")
        assert not store.has("s") and not store.has("f")
        assert store.get("s").reason == "data missing"


def test_key_depends_on_everything_that_changes_a_number():
    base = dict(model_identity="a", weights_digest="w", task="t", task_version=1, task_params={"eps": "1/255"},
                dataset="d", limit=None, seed=0)
    key = cell_key(**base)
    for field, value in [("weights_digest", "w2"), ("task_version", 2), ("task_params", {"eps": "2/255"}),
                         ("limit", 10), ("seed", 1), ("dataset", "e"), ("model_identity", "b")]:
        assert cell_key(**{**base, field: value}) != key, field
    assert cell_key(**base) == key


def test_a_non_default_pipeline_is_part_of_the_key_and_the_default_keeps_old_keys():
    import hashlib
    import json

    base = dict(model_identity="a", weights_digest="w", task="t", task_version=1, task_params={}, dataset="d",
                limit=None, seed=0)
    before = hashlib.sha256(json.dumps(["a", "w", "t", 1, {}, "d", None, 0], sort_keys=True).encode()).hexdigest()
    assert cell_key(**base) == cell_key(**base, pipeline=None) == before[:24], "stores made before must stay valid"
    amp = cell_key(**base, pipeline={"amp": "bf16", "channels_last": False, "compile": False})
    nhwc = cell_key(**base, pipeline={"amp": "off", "channels_last": True, "compile": False})
    assert len({cell_key(**base), amp, nhwc}) == 3


def test_parts_survive_and_are_cleared_when_the_cell_completes(tmp_path):
    with Store(tmp_path) as store:
        store.put_part("k", "fog/1", {"correct": np.array([True])})
    with Store(tmp_path) as store:  # a new process after an interruption
        assert store.get_part("k", "fog/1")["correct"].tolist() == [True]
        store.put(key="k", **IDENT, status="ok", metrics={})
        assert store.get_part("k", "fog/1") is None


def test_latest_run_lists_its_cells_in_order(tmp_path):
    with Store(tmp_path) as store:
        for run in range(2):
            run_id = store.start_run("robustness", {"limit": run})
            for pos, key in enumerate(["a", "b"] if run == 0 else ["b"]):
                store.put(key=key, **IDENT, status="ok", metrics={"accuracy": 0.5})
                store.add_run_cell(run_id, pos, key, "m", "clean")
        run_id, config = store.latest_run("robustness")
        assert config == {"limit": 1} and [c.key for c in store.run_cells(run_id)] == ["b"]
        assert store.latest_run("other") is None


def test_the_report_shows_the_latest_finished_run_not_one_still_going_on_elsewhere(tmp_path):
    """Two processes running one suite on one store: the first to finish must not report the other's
    half-done run (found as a flaky report in tests/test_faults.py's concurrent reruns)."""
    with Store(tmp_path) as store:
        first = store.start_run("robustness", {"who": "first"})
        assert store.latest_run("robustness")[0] == first  # nothing finished yet: the latest
        second = store.start_run("robustness", {"who": "second"})
        store.finish_run(first)
        assert store.latest_run("robustness")[0] == first
        store.finish_run(second)
        assert store.latest_run("robustness")[0] == second


def _writer(path, worker, n):
    with Store(path) as store:
        for i in range(n):
            store.put(key=f"{worker}-{i}", **IDENT, status="ok", metrics={"i": i},
                      samples={"x": np.arange(1000) + i})


def test_concurrent_writers_do_not_corrupt_the_store(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(tmp_path, w, 40)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Store(tmp_path) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert store.db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 120
        assert store.get("2-39").samples["x"][0] == 39


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere, so an unwritable directory cannot be made")
def test_unwritable_directory_gives_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="--results"):
            Store(tmp_path / "sub")
    finally:
        tmp_path.chmod(0o700)


def test_results_path_that_is_a_file_gives_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="writable directory"):
        Store(tmp_path / "file")


def test_a_store_in_a_read_only_folder_is_called_that_not_damaged(tmp_path, monkeypatch):
    """sqlite's WAL needs files beside the store, so a healthy store in a read-only folder fails to open with
    'unable to open database file': that was reported as damaged, with a repair that then failed too."""
    import sqlite3

    from cbbench import store as store_module
    from cbbench.store_repair import repair

    Store(tmp_path).close()

    def read_only_open(self, check):
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(Store, "_open", read_only_open)
    monkeypatch.setattr(store_module.os, "access", lambda path, mode: False)  # as on a read-only mount
    with pytest.raises(StoreError, match="is not writable .read-only..*cp -r") as caught:
        Store(tmp_path)
    assert "damaged" not in str(caught.value)
    with pytest.raises(StoreError, match="is not writable"):
        repair(tmp_path)
    assert (tmp_path / "cbbench.sqlite").is_file()  # nothing moved aside
