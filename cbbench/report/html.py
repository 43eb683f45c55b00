"""The HTML leaderboard: one self-contained page beside the markdown, built from the same rendered blocks.

Why one file with everything inline (CSS, a few lines of JavaScript, the plots
as base64 data URIs): it can be mailed, attached to a paper's artifact or
opened from a results folder on a machine with no network, and it cannot
drift from the markdown, since both come from render_suite's blocks (strings
and Table objects). The HTML adds only what markdown cannot do: tables sorted
by a click on a header, and Δ cells and verdicts coloured by what they say.
"""
from __future__ import annotations

import base64
import html
import re
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

from cbbench.report.table import Table

if TYPE_CHECKING:  # the leaderboard calls this module: a runtime import back would be a circle
    from cbbench.report.leaderboard import SuiteReport

VERDICTS = ("supported", "contradicted", "insufficient evidence", "no verdict")
_FIGURE = re.compile(r"^!\[(?P<caption>.*)\]\((?P<path>[^)]+)\)$")


def inline(text: str):
    """The little markdown the report uses inside a line (**bold**, `code`, *italic*), escaped, as safe HTML."""
    from markupsafe import Markup

    out = html.escape(str(text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", out)
    return Markup(out)


def verdict_of(text: str) -> str:
    """The verdict a sentence or cell states in bold, as a CSS class suffix ('' when none)."""
    match = re.search(r"\*\*(%s)\*\*" % "|".join(VERDICTS), str(text))
    return match.group(1).replace(" ", "-") if match else ""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _table(rows: Table) -> dict:
    headers = list(dict.fromkeys(k for r in rows for k in r if not k.startswith("_")))
    body = []
    for r in rows:
        tones = r.get("_tones", {})
        cells = []
        for h in headers:
            value = r.get(h, "")
            tone = tones.get(h) or verdict_of(value)
            cells.append({"html": inline(value), "tone": tone})
        first = str(r.get(headers[0], "")) if headers else ""
        body.append({"cells": cells, "delta": first.startswith("Δ")})
    return {"kind": "table", "headers": headers, "rows": body}


def sections(blocks: list, figure_root: Path | None = None) -> tuple[str, list, list[dict]]:
    """(title, intro items, sections) from markdown blocks (strings and Tables): each section a title and
    items (paragraph, list, table, figure)."""
    title, out = "", []
    current = intro = {"title": "", "items": []}
    skip_caption = False
    for block in blocks:
        if isinstance(block, Table):
            current["items"].append(_table(block))
            continue
        line = str(block)
        if skip_caption and line.startswith("*") and line.endswith("*"):
            skip_caption = False
            continue
        if line.startswith("# "):
            title = line[2:]
        elif line.startswith("## "):
            current = {"title": line[3:], "items": []}
            out.append(current)
        elif (m := _FIGURE.match(line)) and figure_root is not None:
            current["items"].append({"kind": "figure", "caption": m["caption"],
                                     "src": _data_uri(figure_root / m["path"])})
            skip_caption = True
        elif line.lstrip().startswith("- "):
            items = current["items"]
            if not items or items[-1]["kind"] != "list":
                items.append({"kind": "list", "entries": []})
            nested = line.startswith("  ")
            items[-1]["entries"].append({"html": inline(line.lstrip()[2:]), "verdict": verdict_of(line),
                                         "nested": nested})
        elif line.strip():
            current["items"].append({"kind": "p", "html": inline(line.removeprefix("> "))})
    for i, s in enumerate(out):
        s["id"] = f"s{i}-" + re.sub(r"[^a-z0-9]+", "-", s["title"].lower()).strip("-")
        s["title_html"] = inline(s["title"])
    return title, intro["items"], out


def render_html(report: SuiteReport) -> str:
    """The page for one suite. Without figures in the report (rendered with no plot folder, e.g. ``--format
    html`` alone), they are drawn into a temporary folder and embedded, so the page still has them and the
    results folder's plots/ is left as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        title, intro, parts = sections(report.blocks, report.figure_root)
        if not any(i["kind"] == "figure" for s in parts for i in s["items"]):
            parts = _with_plots(report, parts, Path(tmp))
        return page(title, intro, parts)


def page(title: str, intro: list, parts: list[dict], legend: bool = True) -> str:
    """The template filled in; ``legend``: explain the Δ colours (pages without coloured Δ cells leave it out)."""
    from jinja2 import Environment, PackageLoader

    env = Environment(loader=PackageLoader("cbbench.report", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("leaderboard.html.j2").render(title=re.sub(r"[`*]", "", title),
                                                          title_html=inline(title), intro=intro, sections=parts,
                                                          legend=legend)


def _with_plots(report: SuiteReport, parts: list[dict], folder: Path) -> list[dict]:
    from cbbench.report.plots import make_plots

    made = make_plots(list(report.cells.values()), report.paired, folder, report.suite)
    if not made:
        return parts
    plots = {"title": "Plots", "title_html": inline("Plots"), "id": "plots",
             "items": [{"kind": "figure", "caption": c, "src": _data_uri(p)} for c, p in made]}
    # Where the markdown has them: after the leaderboard and paired tables.
    at = max((i + 1 for i, s in enumerate(parts) if s["title"].startswith(("Leaderboard", "Per training seed",
                                                                             "CB vs baseline"))), default=len(parts))
    return parts[:at] + [plots] + parts[at:]
