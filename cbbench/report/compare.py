"""Two results side by side: per (model, task) the two headline numbers, their difference, and what differs.

Why the explanation column: a number that moved between two machines or two
runs is only useful with its cause. Every cell records what its number depends
on (task parameters and version, dataset, limit, seed, the weights' digest,
package versions, CPU, device, evaluation pipeline), so the differences
between the two cells' records are listed beside the two numbers; where none
differ, the same inputs gave another number (e.g. a non-deterministic kernel).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cbbench.report.leaderboard import Table, _column
from cbbench.store import Cell, Store


@dataclass
class Side:
    """One side of the comparison: where its cells come from, said in words, and the cells by (model, task)."""
    label: str
    cells: dict[tuple[str, str], Cell]


def _open(folder: str | Path) -> Store:
    path = Path(folder) / "cbbench.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no results store in {folder} (a results folder holds cbbench.sqlite)")
    return Store(folder)


def _run_cells(store: Store, run_id: int) -> dict[tuple[str, str], Cell]:
    cells = {(c.model, c.task): c for c in store.run_cells(run_id)}
    if not cells:
        raise ValueError(f"run {run_id} of {store.dir} has no cells ('cbbench report' shows the runs it has)")
    return cells


def load_sides(a: str | Path, b: str | Path | None = None, runs: tuple[int, int] | None = None,
               suite: str | None = None) -> list[tuple[str, Side, Side]]:
    """[(suite or run label, side A, side B)]: two folders' latest runs of each suite they share (or ``suite``),
    or with ``runs`` two runs of the one store in ``a``."""
    if (b is None) == (runs is None):
        raise ValueError("compare needs two results folders (A B) or one folder and --runs N M")
    if runs is not None:
        with _open(a) as store:
            return [(f"runs {runs[0]} and {runs[1]}", Side(f"`{a}` run {runs[0]}", _run_cells(store, runs[0])),
                     Side(f"`{a}` run {runs[1]}", _run_cells(store, runs[1])))]
    with _open(a) as sa, _open(b) as sb:
        shared = [s for s in sa.suites() if s in sb.suites()]
        chosen = [suite] if suite else shared
        if not chosen or (suite and suite not in shared):
            raise ValueError(f"no suite with results in both {a} and {b} "
                             f"({', '.join(sa.suites()) or 'none'} vs {', '.join(sb.suites()) or 'none'})")
        out = []
        for s in chosen:
            (ra, cells_a), (rb, cells_b) = sa.shown_cells(s), sb.shown_cells(s)
            out.append((f"suite `{s}`", Side(f"`{a}` run {ra.run_id}", {(c.model, c.task): c for c in cells_a}),
                        Side(f"`{b}` run {rb.run_id}", {(c.model, c.task): c for c in cells_b})))
        return out


def record(cell: Cell) -> dict:
    """What a cell's number depends on, as recorded with it."""
    p = cell.provenance
    return {"status": cell.status, "task version": cell.task_version, "task params": cell.task_params,
            "dataset": cell.dataset, "limit": cell.limit, "seed": cell.seed,
            "weights": p.get("weights_digest"),
            "model": {k: v for k, v in cell.model_spec.items() if k != "description"},
            "versions": {**p.get("versions", {}), "python": p.get("python")},
            "cpu": f"{p.get('cpu')} ({p.get('cpu_capability')} kernels)" if p.get("cpu") else None,
            "device": p.get("device"), "threads": p.get("threads"), "batch size": p.get("batch_size"),
            "pipeline": {k: v for k, v in (p.get("pipeline") or {}).items() if k != "notes"}}


def differences(a: Cell, b: Cell) -> list[str]:
    """'name: A → B' for each recorded field that differs (dicts: each differing key)."""
    if a.key == b.key and a.created == b.created:
        return ["the same stored cell"]
    out = []
    ra, rb = record(a), record(b)
    for name in ra:
        x, y = ra[name], rb[name]
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{name}.{k}: {x.get(k)} → {y.get(k)}" for k in dict.fromkeys([*x, *y]) if x.get(k) != y.get(k)]
        elif x != y:
            out.append(f"{name}: {x} → {y}")
    return out


def compare_blocks(pairs: list[tuple[str, Side, Side]]) -> list:
    """The comparison as markdown blocks (strings and Tables), for the terminal and for the HTML page."""
    blocks = ["# cbbench compare", ""]
    for what, a, b in pairs:
        rows, moved = [], 0
        for model, task in dict.fromkeys([*a.cells, *b.cells]):
            ca, cb = a.cells.get((model, task)), b.cells.get((model, task))
            col = _column(task)
            va, vb = (c.metrics.get(col.key) if c is not None and c.status == "ok" else None for c in (ca, cb))
            delta = "–"
            if va is not None and vb is not None:
                scale, digits = (100, 1) if col.percent else (1, 3)
                delta = f"{scale * (vb - va):+.{digits}f}"
                moved += vb != va
            why = ("only in A" if cb is None else "only in B" if ca is None else "; ".join(differences(ca, cb)) or
                   ("nothing recorded differs (same inputs, same number: a rerun)" if va == vb else
                    "nothing recorded differs (same inputs, another number: a non-deterministic kernel?)"))
            rows.append({"model": model, "task": task, "metric": col.header,
                         "A": col.fmt(va) if ca is None or ca.status == "ok" else ca.status,
                         "B": col.fmt(vb) if cb is None or cb.status == "ok" else cb.status,
                         "B − A": delta, "what differs (A → B)": why})
        blocks += [f"## {what}", "", f"A: {a.label} · B: {b.label}. {len(rows)} (model, task) cells, {moved} with "
                   "another headline number. Accuracies in %.", "", Table(rows), ""]
    return blocks


def to_markdown(blocks: list) -> str:
    return "\n".join(map(str, blocks))


def to_html(blocks: list) -> str:
    from cbbench.report.html import page, sections

    title, intro, parts = sections(blocks)
    return page(title, intro, parts, legend=False)
