"""Check a results store, and rescue what is readable from a damaged one into a new store.

A store is one SQLite file; a partly overwritten file can still hold most of its
cells. ``check`` says what is wrong without changing anything; ``repair`` moves
the file aside and copies every row it can still read (each cell whole, checked
by decoding it) into a fresh store in its place.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from cbbench.errors import StoreError
from cbbench.store import COLUMNS, Store, not_writable, unpack

TABLES = ("cells", "parts", "runs", "run_cells")  # parents first: run_cells name cells and runs


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StoreError(f"no results store at {path}; point --results at the directory that holds cbbench.sqlite")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def check(results_dir: str | Path) -> list[str]:
    """What is wrong with the store (empty: nothing). Reads everything, changes nothing."""
    path = Path(results_dir) / "cbbench.sqlite"
    db = _connect(path)
    problems = []
    try:
        rows = [r[0] for r in db.execute("PRAGMA integrity_check")]
        problems += [f"integrity_check: {r}" for r in rows if r != "ok"]
        for key, *fields in _rows(db, "cells", ["key", "model_spec", "task_params", "metrics", "provenance",
                                                  "samples"], problems):
            if (why := _unreadable(fields)) is not None:
                problems.append(f"cell {key}: {why}")
    except sqlite3.DatabaseError as exc:
        problems.append(f"cannot read the file as a database: {exc}")
    finally:
        db.close()
    return problems


def repair(results_dir: str | Path) -> dict:
    """Move the store aside and copy every readable row into a new store at its place. Returns counts and
    where the damaged file went."""
    results_dir = Path(results_dir)
    path = results_dir / "cbbench.sqlite"
    _connect(path).close()
    if (error := not_writable(path)) is not None:  # moving it aside would fail halfway
        raise error
    aside = path.with_name(f"cbbench.damaged-{time.strftime('%Y%m%d-%H%M%S')}.sqlite")
    for suffix in ("", "-wal", "-shm"):  # the WAL holds committed transactions not yet in the main file
        if Path(f"{path}{suffix}").exists():
            Path(f"{path}{suffix}").rename(f"{aside}{suffix}")
    src = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
    counts, problems = {}, []
    try:
        with Store(results_dir) as store:
            for table in TABLES:
                columns = _columns(src, table, problems)
                copied = 0
                for row in _rows(src, table, columns, problems):
                    if table == "cells" and _unreadable([row[columns.index(c)] for c in (
                            "model_spec", "task_params", "metrics", "provenance", "samples")]) is not None:
                        continue
                    copied += store.db.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) VALUES "
                                               f"({', '.join('?' * len(columns))})", row).rowcount
                counts[table] = copied
    finally:
        src.close()
    return {"copied": counts, "problems": problems, "moved_to": aside}


def _columns(db, table: str, problems: list[str]) -> list[str]:
    try:
        have = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
    except sqlite3.DatabaseError as exc:
        problems.append(f"{table}: schema unreadable ({exc})")
        return []
    return [c for c in have if c in COLUMNS[table] or table == "run_cells"]


def _rows(db, table: str, columns: list[str], problems: list[str]):
    """Every readable row: a whole-table scan, and where that breaks, row by row over the rowids (rows seen
    twice are ignored by the INSERT OR IGNORE that copies them)."""
    if not columns:
        return
    select = f"SELECT {', '.join(columns)} FROM {table}"
    try:
        for row in db.execute(select):  # a cursor: a large store is not read into memory at once
            yield row
        return
    except sqlite3.DatabaseError as exc:
        problems.append(f"{table}: full scan failed ({exc}); reading row by row")
    try:
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = 100_000
    lost = 0
    for rowid in range(1, top + 1):
        try:
            row = db.execute(f"{select} WHERE rowid=?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            lost += 1
            continue
        if row is not None:
            yield row
    if lost:
        problems.append(f"{table}: {lost} row(s) unreadable")


def _unreadable(fields) -> str | None:
    """Why a cell's stored fields do not decode (JSON texts, then the samples blob), None if they do."""
    *texts, blob = fields
    try:
        for text in texts:
            json.loads(text or "{}")
        unpack(blob)
    except Exception as exc:  # any decoding failure means the cell cannot be trusted
        return f"{exc.__class__.__name__}: {exc}"
    return None
