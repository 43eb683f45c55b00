"""The results store: one SQLite database (WAL mode) under the results directory.

A cell is one (model, task) evaluation, keyed by a hash of the model spec and
weights digest, the task name, version and parameters, the dataset, limit and
seed. Each cell is written in one transaction with its metrics, per-sample
outcomes (an npz blob) and provenance, so an interrupted run loses at most the
cell in progress, and even that keeps its finished parts (``parts`` table).
Runs record which cells they used, so a report shows the latest run of a suite.
"""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbbench.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL, model_spec TEXT NOT NULL, weights_digest TEXT NOT NULL,
    task TEXT NOT NULL, task_version INTEGER NOT NULL, task_params TEXT NOT NULL,
    dataset TEXT NOT NULL, limit_n INTEGER, seed INTEGER NOT NULL,
    status TEXT NOT NULL, reason TEXT,
    metrics TEXT, samples BLOB, provenance TEXT,
    created REAL NOT NULL, wall_s REAL
);
CREATE TABLE IF NOT EXISTS parts (
    cell_key TEXT NOT NULL, part TEXT NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (cell_key, part)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    suite TEXT NOT NULL, config TEXT NOT NULL, started REAL NOT NULL, finished REAL
);
CREATE TABLE IF NOT EXISTS run_cells (
    run_id INTEGER NOT NULL, position INTEGER NOT NULL, cell_key TEXT NOT NULL,
    model TEXT NOT NULL, task TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
"""


def cell_key(model_identity: str, weights_digest: str, task: str, task_version: int,
             task_params: dict, dataset: str, limit: int | None, seed: int, pipeline: dict | None = None) -> str:
    """The cell's identity. ``pipeline``: a non-default evaluation pipeline (amp, channels-last, compile),
    which can change numbers; None keeps the keys of the default pipeline what they always were."""
    fields = [model_identity, weights_digest, task, task_version, task_params, dataset, limit, seed]
    payload = json.dumps(fields + [pipeline] if pipeline else fields, sort_keys=True, default=list)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def unpack(blob: bytes | None) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@dataclass
class Cell:
    key: str
    model: str
    model_spec: dict
    task: str
    task_version: int
    task_params: dict
    dataset: str
    limit: int | None
    seed: int
    status: str
    reason: str | None
    metrics: dict
    provenance: dict
    wall_s: float | None
    created: float
    _samples_blob: bytes | None = None

    @property
    def samples(self) -> dict[str, np.ndarray]:
        return unpack(self._samples_blob)


class Store:
    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.path = self.dir / "cbbench.sqlite"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=60000")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the results store {self.path}: {exc}. Choose a writable directory with "
                "--results DIR or CBBENCH_RESULTS."
            ) from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # cells
    def has(self, key: str) -> bool:
        return self.ok_metrics(key) is not None

    def ok_metrics(self, key: str) -> dict | None:
        """The metrics of a finished ('ok') cell, None if there is none: the runner's cache check, without
        reading the cell's per-sample arrays."""
        row = self.db.execute("SELECT metrics FROM cells WHERE key=? AND status='ok'", (key,)).fetchone()
        return None if row is None else json.loads(row[0] or "{}")

    def put(self, *, key: str, model: str, model_spec: dict, weights_digest: str, task: str, task_version: int,
            task_params: dict, dataset: str, limit: int | None, seed: int, status: str, reason: str | None = None,
            metrics: dict | None = None, samples: dict[str, np.ndarray] | None = None,
            provenance: dict | None = None, wall_s: float | None = None) -> None:
        blob = pack(samples) if samples else None
        with self.db:  # one transaction: the cell is written whole or not at all
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, model, json.dumps(model_spec, default=list), weights_digest, task, task_version,
                 json.dumps(task_params, sort_keys=True, default=list), dataset, limit, seed, status, reason,
                 json.dumps(metrics or {}), blob, json.dumps(provenance or {}), time.time(), wall_s))
            if status == "ok":
                self.db.execute("DELETE FROM parts WHERE cell_key=?", (key,))

    def get(self, key: str) -> Cell | None:
        row = self.db.execute(
            "SELECT key, model, model_spec, task, task_version, task_params, dataset, limit_n, seed, status, "
            "reason, metrics, provenance, wall_s, created, samples FROM cells WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        return Cell(row[0], row[1], json.loads(row[2]), row[3], row[4], json.loads(row[5]), row[6], row[7], row[8],
                    row[9], row[10], json.loads(row[11] or "{}"), json.loads(row[12] or "{}"), row[13], row[14],
                    row[15])

    # parts of a cell in progress
    def get_part(self, key: str, part: str) -> dict[str, np.ndarray] | None:
        row = self.db.execute("SELECT payload FROM parts WHERE cell_key=? AND part=?", (key, part)).fetchone()
        return unpack(row[0]) if row else None

    def get_parts(self, key: str, prefix: str) -> list[dict[str, np.ndarray]]:
        """The parts whose names start with ``prefix``, in name order."""
        rows = self.db.execute("SELECT payload FROM parts WHERE cell_key=? AND substr(part, 1, ?)=? ORDER BY part",
                               (key, len(prefix), prefix))
        return [unpack(row[0]) for row in rows]

    def delete_parts(self, key: str) -> None:
        """Forget what an interrupted attempt at a cell stored (``--force``: recompute everything)."""
        with self.db:
            self.db.execute("DELETE FROM parts WHERE cell_key=?", (key,))

    def put_part(self, key: str, part: str, arrays: dict[str, np.ndarray]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO parts VALUES (?,?,?)", (key, part, pack(arrays)))

    # runs
    def start_run(self, suite: str, config: dict) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs (suite, config, started) VALUES (?,?,?)",
                                  (suite, json.dumps(config, default=str), time.time()))
        return int(cur.lastrowid)

    def add_run_cell(self, run_id: int, position: int, key: str, model: str, task: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO run_cells VALUES (?,?,?,?,?)", (run_id, position, key, model, task))

    def finish_run(self, run_id: int) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished=? WHERE run_id=?", (time.time(), run_id))

    def suites(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT suite FROM runs ORDER BY suite")]

    def latest_run(self, suite: str) -> tuple[int, dict] | None:
        """The latest finished run of ``suite`` (else the latest run): a run still going on in another
        process, or one that was killed, is not reported while a finished one exists."""
        row = self.db.execute("SELECT run_id, config FROM runs WHERE suite=? "
                              "ORDER BY finished IS NOT NULL DESC, run_id DESC LIMIT 1", (suite,)).fetchone()
        return (row[0], json.loads(row[1])) if row else None

    def run_cells(self, run_id: int) -> list[Cell]:
        keys = [r[0] for r in self.db.execute(
            "SELECT cell_key FROM run_cells WHERE run_id=? ORDER BY position", (run_id,))]
        return [c for c in (self.get(k) for k in keys) if c is not None]
