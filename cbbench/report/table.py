"""The one table type of the reports: rows that print as markdown, and that the HTML page renders itself."""
from __future__ import annotations

from tabulate import tabulate


class Table(list):
    """Rows (dicts) that print as a GitHub markdown table. Keys starting with "_" are left out of the markdown:
    ``_tones`` (column -> better / worse / inconclusive) lets the HTML page colour Δ cells without re-deriving them."""

    def __str__(self) -> str:
        return tabulate([{k: v for k, v in r.items() if not k.startswith("_")} for r in self],
                        headers="keys", tablefmt="github", disable_numparse=True)
