"""Which models of a run are broken (non-finite outputs somewhere): their comparisons and verdicts are withheld.

The leaderboard and the claims both ask; one module, so that a model is broken for both or for neither.
"""
from __future__ import annotations

import math

from cbbench.metrics import cell_nonfinite
from cbbench.tasks import TASKS


def broken_models(cells: dict) -> dict[str, str]:
    """Model -> the first task in which it gave non-finite outputs (NaN/inf logits, or a headline that is not a
    number). Such a model is broken: its comparisons and verdicts are withheld in every task, not only there."""
    broken: dict[str, str] = {}
    for (m, task), cell in cells.items():
        if m in broken or cell is None or cell.status != "ok":
            continue
        value = cell.metrics.get(TASKS.get(task).headline.key if task in TASKS else "accuracy")
        if cell_nonfinite(cell) or (isinstance(value, float) and not math.isfinite(value)):
            broken[m] = task
    return broken


def withheld_note(models, broken: dict[str, str]) -> str | None:
    """"withheld: non-finite outputs from M (in T)" if any of ``models`` is broken, else None."""
    bad = [m for m in models if m in broken]
    return (f"withheld: non-finite outputs from {', '.join(f'{m} (in {broken[m]})' for m in bad)}"
            if bad else None)
