"""The results store: one SQLite database (WAL mode) under the results directory.

A cell is one (model, task) evaluation, keyed by a hash of the model spec and
weights digest, the task name, version and parameters, the dataset, limit and
seed. Each cell is written in one transaction with its metrics, per-sample
outcomes (an npz blob) and provenance, so an interrupted run loses at most the
cell in progress, and even that keeps its finished parts (``parts`` table).
Every run is kept with what happened to each of its cells (``run_cells``), so a
report can show any run, and a run whose cells failed never hides good cells:
a failed or skipped attempt never overwrites a finished cell.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbbench.errors import StoreError

# PRAGMA user_version of the stores this code writes. 0: before run history (run_cells without status).
SCHEMA_VERSION = 1

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
    model TEXT NOT NULL, task TEXT NOT NULL, status TEXT, reason TEXT, traceback TEXT,
    PRIMARY KEY (run_id, position)
);
"""
COLUMNS = {  # what a cbbench store must have; anything else in the file is someone else's database
    "cells": {"key", "model", "model_spec", "weights_digest", "task", "task_version", "task_params", "dataset",
              "limit_n", "seed", "status", "reason", "metrics", "samples", "provenance", "created", "wall_s"},
    "parts": {"cell_key", "part", "payload"},
    "runs": {"run_id", "suite", "config", "started", "finished"},
    "run_cells": {"run_id", "position", "cell_key", "model", "task"},
}
MIGRATIONS = {  # from user_version N to N + 1
    0: ["ALTER TABLE run_cells ADD COLUMN status TEXT", "ALTER TABLE run_cells ADD COLUMN reason TEXT",
        "ALTER TABLE run_cells ADD COLUMN traceback TEXT"],
}
USED = ("ok", "cached")  # run_cells statuses whose cell holds numbers


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


def not_writable(path: Path) -> StoreError | None:
    """The error for a store in a folder cbbench cannot write (sqlite's WAL needs files beside the store, so a
    read-only folder fails to open even a healthy store: not "damaged"), or None if the folder is writable."""
    if all(os.access(p, os.W_OK) for p in (path.parent, path) if p.exists()):
        return None
    return StoreError(f"the results folder {path.parent} is not writable (read-only?): cbbench writes its store "
                      f"{path.name} and its journal there, also to read it. Copy the folder somewhere writable "
                      f"(cp -r {path.parent} /tmp/results) and pass --results /tmp/results, or make it writable.")


def damaged(path: Path, what: str) -> StoreError:
    return StoreError(
        f"the results store {path} is damaged ({what}). Finished results may still be readable: "
        f"'cbbench store repair --results {path.parent}' copies every readable cell into a new store and "
        f"moves the damaged file aside; or move it aside yourself (mv {path} {path}.damaged) and rerun.")


def _sqlite_errors(method):
    """Every SQLite error as one StoreError that says what to do (a full disk, a damaged file, a lock)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            text = str(exc)
            if "full" in text:
                raise StoreError(f"the disk holding the results store {self.path} is full ({text}). Cells finished "
                                 "so far are kept: free some space and rerun the same command to resume.") from None
            if "malformed" in text or "not a database" in text:
                raise damaged(self.path, text) from None
            raise StoreError(f"results store {self.path}: {exc.__class__.__name__}: {text}") from None
    return wrapper


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
    note: str | None = None  # set by a report: why this cell stands in for what its run did

    @property
    def samples(self) -> dict[str, np.ndarray]:
        return unpack(self._samples_blob)


@dataclass(frozen=True)
class Run:
    run_id: int
    suite: str
    config: dict
    started: float
    finished: float | None
    counts: dict  # run_cells status -> number of cells

    @property
    def failed(self) -> bool:
        """Every cell failed or was skipped: nothing in it to show."""
        return sum(self.counts.get(s, 0) for s in USED) == 0 and bool(self.counts)


def shown_run(runs: list[Run]) -> Run | None:
    """Of one suite's runs, the one its report shows: the latest finished run that has numbers to show (else
    the latest finished run, else the latest run). A run still going on in another process, one that was
    killed, and one whose cells all failed are not reported while a better one exists."""
    return max(runs, key=lambda r: (r.finished is not None and not r.failed, r.finished is not None, r.run_id),
               default=None)


CELL_COLUMNS = ("key, model, model_spec, task, task_version, task_params, dataset, limit_n, seed, status, reason, "
                "metrics, provenance, wall_s, created, samples")


def _cell(row) -> Cell:
    return Cell(row[0], row[1], json.loads(row[2]), row[3], row[4], json.loads(row[5]), row[6], row[7], row[8],
                row[9], row[10], json.loads(row[11] or "{}"), json.loads(row[12] or "{}"), row[13], row[14], row[15])


class Store:
    def __init__(self, results_dir: str | Path, check: bool = True):
        self.dir = Path(results_dir)
        self.path = self.dir / "cbbench.sqlite"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout=60000")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the results store {self.path}: {exc}. Choose a writable directory with "
                "--results DIR or CBBENCH_RESULTS."
            ) from exc
        try:
            self._open(check)
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            self.db.close()
            raise (not_writable(self.path) or damaged(self.path, str(exc))) from None
        except (StoreError, sqlite3.Error) as exc:
            self.db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open the results store {self.path}: {exc}. Choose a writable directory "
                             "with --results DIR or CBBENCH_RESULTS.") from exc

    def _open(self, check: bool) -> None:
        """Refuse a damaged, foreign or newer store before writing anything; bring an older one up to date."""
        if check and (result := self.db.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
            raise damaged(self.path, f"quick_check: {result}")
        tables = {r[0]: {c[1] for c in self.db.execute(f"PRAGMA table_info({r[0]})")}
                  for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        tables.pop("sqlite_sequence", None)
        missing = {t: sorted(cols - tables[t]) for t, cols in COLUMNS.items() if t in tables and cols - tables[t]}
        if tables and ("cells" not in tables or missing):
            raise StoreError(
                f"{self.path} is not a cbbench results store (tables {sorted(tables)}"
                + (f"; missing columns {missing}" if missing else "") + "). Point --results at another "
                "directory, or move that file aside.")
        self.db.execute("PRAGMA journal_mode=WAL")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # one process migrates; the others then see the new version
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"the results store {self.path} was written by a newer cbbench (schema {version}; "
                                 f"this one reads up to {SCHEMA_VERSION}): upgrade cbbench or use another --results")
            fresh = not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='cells'").fetchone()
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            for step in range(SCHEMA_VERSION if fresh else version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # cells
    def has(self, key: str) -> bool:
        return self.ok_metrics(key) is not None

    @_sqlite_errors
    def ok_metrics(self, key: str) -> dict | None:
        """The metrics of a finished ('ok') cell, None if there is none: the runner's cache check, without
        reading the cell's per-sample arrays."""
        row = self.db.execute("SELECT metrics FROM cells WHERE key=? AND status='ok'", (key,)).fetchone()
        return None if row is None else json.loads(row[0] or "{}")

    @_sqlite_errors
    def put(self, *, key: str, model: str, model_spec: dict, weights_digest: str, task: str, task_version: int,
            task_params: dict, dataset: str, limit: int | None, seed: int, status: str, reason: str | None = None,
            metrics: dict | None = None, samples: dict[str, np.ndarray] | None = None,
            provenance: dict | None = None, wall_s: float | None = None) -> None:
        """Write a cell whole. A failed or skipped attempt does not replace a finished cell of the same key
        (``--force`` after a good run): the run records what happened, the store keeps the good numbers."""
        blob = pack(samples) if samples else None
        with self.db:  # one transaction: the cell is written whole or not at all
            self.db.execute("BEGIN IMMEDIATE")
            if status != "ok" and self.db.execute("SELECT 1 FROM cells WHERE key=? AND status='ok'",
                                                  (key,)).fetchone():
                return
            self.db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, model, json.dumps(model_spec, default=list), weights_digest, task, task_version,
                 json.dumps(task_params, sort_keys=True, default=list), dataset, limit, seed, status, reason,
                 json.dumps(metrics or {}), blob, json.dumps(provenance or {}), time.time(), wall_s))
            if status == "ok":
                self.db.execute("DELETE FROM parts WHERE cell_key=?", (key,))

    @_sqlite_errors
    def get(self, key: str) -> Cell | None:
        row = self.db.execute(f"SELECT {CELL_COLUMNS} FROM cells WHERE key=?", (key,)).fetchone()
        return None if row is None else _cell(row)

    # parts of a cell in progress
    @_sqlite_errors
    def get_part(self, key: str, part: str) -> dict[str, np.ndarray] | None:
        row = self.db.execute("SELECT payload FROM parts WHERE cell_key=? AND part=?", (key, part)).fetchone()
        return unpack(row[0]) if row else None

    @_sqlite_errors
    def get_parts(self, key: str, prefix: str) -> list[dict[str, np.ndarray]]:
        """The parts whose names start with ``prefix``, in name order."""
        rows = self.db.execute("SELECT payload FROM parts WHERE cell_key=? AND substr(part, 1, ?)=? ORDER BY part",
                               (key, len(prefix), prefix))
        return [unpack(row[0]) for row in rows]

    @_sqlite_errors
    def delete_parts(self, key: str) -> None:
        """Forget what an interrupted attempt at a cell stored (``--force``: recompute everything)."""
        with self.db:
            self.db.execute("DELETE FROM parts WHERE cell_key=?", (key,))

    @_sqlite_errors
    def put_part(self, key: str, part: str, arrays: dict[str, np.ndarray]) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO parts VALUES (?,?,?)", (key, part, pack(arrays)))

    # runs
    @_sqlite_errors
    def start_run(self, suite: str, config: dict) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs (suite, config, started) VALUES (?,?,?)",
                                  (suite, json.dumps(config, default=str), time.time()))
        return int(cur.lastrowid)

    @_sqlite_errors
    def add_run_cell(self, run_id: int, position: int, key: str, model: str, task: str, status: str | None = None,
                     reason: str | None = None, traceback: str | None = None) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO run_cells VALUES (?,?,?,?,?,?,?,?)",
                            (run_id, position, key, model, task, status, reason, traceback))

    @_sqlite_errors
    def finish_run(self, run_id: int) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET finished=? WHERE run_id=?", (time.time(), run_id))

    @_sqlite_errors
    def suites(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT suite FROM runs ORDER BY suite")]

    @_sqlite_errors
    def runs(self, suite: str | None = None) -> list[Run]:
        """Every run (of ``suite``), oldest first, with how many of its cells ended how. A cell recorded
        before run history kept statuses counts with the status its cell has now."""
        counts: dict[int, dict] = {}
        for run_id, status, n in self.db.execute(
                "SELECT rc.run_id, COALESCE(rc.status, c.status, 'missing'), COUNT(*) FROM run_cells rc "
                "LEFT JOIN cells c ON c.key = rc.cell_key GROUP BY rc.run_id, 2"):
            counts.setdefault(run_id, {})[status] = n
        rows = self.db.execute("SELECT run_id, suite, config, started, finished FROM runs"
                               + (" WHERE suite=?" if suite else "") + " ORDER BY run_id", (suite,) if suite else ())
        return [Run(r[0], r[1], json.loads(r[2]), r[3], r[4], counts.get(r[0], {})) for r in rows]

    def run(self, run_id: int) -> Run | None:
        return next((r for r in self.runs() if r.run_id == run_id), None)

    def latest_run(self, suite: str) -> tuple[int, dict] | None:
        shown = shown_run(self.runs(suite))
        return None if shown is None else (shown.run_id, shown.config)

    def shown_cells(self, suite: str) -> tuple[Run, list[Cell]] | None:
        """The run a report of ``suite`` shows and its cells as shown (failed ones filled in from earlier
        runs): what the report, the per-sample export, headline logging and compare all read."""
        shown = shown_run(self.runs(suite))
        return None if shown is None else (shown, self.run_cells(shown.run_id, fill_in=True))

    @_sqlite_errors
    def run_cells(self, run_id: int, fill_in: bool = False) -> list[Cell]:
        """The cells of a run, in order. A cell that failed or was skipped in this run but is stored finished
        (a good earlier run of the same key) comes back finished, with a note. ``fill_in``: a cell that
        failed with no finished twin is replaced by the latest finished cell of the same model and task from
        an earlier run of the suite on the same images (dataset, limit, seed), with a note."""
        rows = self.db.execute("SELECT cell_key, model, task, status, reason FROM run_cells WHERE run_id=? "
                               "ORDER BY position", (run_id,)).fetchall()
        cells = []
        for key, model, task, status, reason in rows:
            cell = self.get(key)
            if cell is None:
                continue
            if cell.model != model:  # stored by a run that named the same network and weights otherwise
                cell.model, cell.model_spec = model, {**(cell.model_spec or {}), "name": model}
            failed_here = status is not None and status not in USED
            if cell.status == "ok" and failed_here:
                cell.note = f"this run's attempt {status}: {reason}; shown: the finished cell stored before"
            elif cell.status != "ok":
                if failed_here:  # what happened in this run (the row may hold a later attempt's reason)
                    cell.status, cell.reason = status, reason
                if fill_in:
                    cell = self._earlier_ok(run_id, cell) or cell
            cells.append(cell)
        return cells

    def _earlier_ok(self, run_id: int, cell: Cell) -> Cell | None:
        row = self.db.execute(
            f"SELECT rc.run_id, {', '.join('c.' + c.strip() for c in CELL_COLUMNS.split(','))} FROM run_cells rc "
            "JOIN cells c ON c.key = rc.cell_key JOIN runs r ON r.run_id = rc.run_id "
            "WHERE rc.run_id < ? AND r.suite = (SELECT suite FROM runs WHERE run_id=?) AND c.status='ok' "
            "AND c.model=? AND c.task=? AND c.dataset=? AND c.limit_n IS ? AND c.seed=? "
            "ORDER BY rc.run_id DESC LIMIT 1",
            (run_id, run_id, cell.model, cell.task, cell.dataset, cell.limit, cell.seed)).fetchone()
        if row is None:
            return None
        earlier = _cell(row[1:])
        earlier.note = f"this run's attempt {cell.status}: {cell.reason}; shown: the same cell from run {row[0]}"
        return earlier

    @_sqlite_errors
    def failure_traceback(self, run_id: int, model: str, task: str) -> str | None:
        row = self.db.execute("SELECT traceback FROM run_cells WHERE run_id=? AND model=? AND task=? "
                              "ORDER BY position DESC LIMIT 1", (run_id, model, task)).fetchone()
        return row[0] if row else None
