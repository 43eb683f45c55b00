"""``--log-samples``: the per-image outcomes of a suite's latest run, one file per cell, outside SQLite.

The store keeps each cell's per-sample arrays as an npz blob (what the paired
statistics resample); this writes them as JSONL, one line per image, so they can
be read with pandas, jq or a notebook without cbbench, and as Parquet when
pyarrow is installed (not a dependency). Columns: docs/samples.md.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from cbbench.store import Store

FIRST = ("index", "label", "pred", "correct", "confidence")


def safe_name(name: str) -> str:
    """A model or task name as a file name: ad-hoc names hold ':', '@' and '/'."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "model"


def export_samples(results_dir: str | Path, suite: str, parquet: bool | None = None) -> list[Path]:
    """Write ``<results>/samples/<suite>/<model>__<task>.jsonl`` (+ ``.parquet``) for each finished cell of the
    suite's latest run; returns the files. ``parquet=None``: when pyarrow imports."""
    results_dir = Path(results_dir)
    with Store(results_dir) as store:
        shown = store.shown_cells(suite)
        cells = [c for c in shown[1] if c.status == "ok"] if shown else []
        arrays = {c.key: c.samples for c in cells}
    if parquet is None:
        try:
            import pyarrow  # noqa: F401
            parquet = True
        except ImportError:
            parquet = False
    # Tasks that keep no labels (corruptions, attention) borrow them from a cell on the same images.
    labels = {}
    for c in cells:
        a = arrays[c.key]
        if "label" in a and "index" in a and np.array_equal(a["index"], np.arange(len(a["index"]))):
            labels.setdefault((c.dataset, c.limit, len(a["label"])), a["label"])
    out_dir = results_dir / "samples" / safe_name(suite)
    written = []
    for c in cells:
        columns = _columns(arrays[c.key], labels, c)
        if not columns:
            continue  # e.g. throughput: nothing per image
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{safe_name(c.model)}__{safe_name(c.task)}.jsonl"
        n = len(columns["index"])
        values = {k: _plain(v) for k, v in columns.items()}
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps({"model": c.model, "task": c.task, **{k: v[i] for k, v in values.items()}},
                                   separators=(",", ":"), allow_nan=False) + "\n")
        written.append(path)
        if parquet:
            import pandas as pd

            frame = pd.DataFrame({"model": c.model, "task": c.task, **values})
            frame.to_parquet(path.with_suffix(".parquet"), index=False)
            written.append(path.with_suffix(".parquet"))
    return written


def _columns(a: dict[str, np.ndarray], labels: dict, cell) -> dict[str, np.ndarray]:
    """The cell's arrays that have one entry per image, index and label first (added when the task kept none)."""
    if not a:
        return {}
    n = len(a["correct"]) if "correct" in a else len(next(iter(a.values())))
    columns = {"index": a.get("index", np.arange(n))}
    label = a.get("label", labels.get((cell.dataset, cell.limit, n)))
    if label is not None:
        columns["label"] = label
    for key in (*FIRST, *a):
        if key in a and key not in columns and a[key].ndim >= 1 and len(a[key]) == n:
            columns[key] = a[key]
    return columns


def _plain(values: np.ndarray) -> list:
    """JSON-ready values: numpy scalars as Python ones, NaN/inf as null, extra axes as nested lists."""
    items = values.tolist()
    if values.dtype.kind == "f":
        return _no_nan(items)
    return items


def _no_nan(value):
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value if math.isfinite(value) else None
