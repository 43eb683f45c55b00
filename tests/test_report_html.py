"""The HTML leaderboard: self-contained, built from the same blocks as the markdown, and reachable from the CLI."""
from __future__ import annotations

import re

from cbbench.cli import main
from cbbench.report import write_reports
from cbbench.report.html import render_html
from cbbench.report.leaderboard import render_suite
from tests.test_report import fixed_store


def test_page_is_self_contained_with_the_markdown_tables(tmp_path):
    with fixed_store(tmp_path) as store:
        report = render_suite(store, "fixture", tmp_path / "plots")
    page = render_html(report)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must need no network"
    assert page.count('<table class="sortable">') == sum(1 for b in report.blocks if type(b).__name__ == "Table")
    assert page.count('src="data:image/png;base64,') == 2  # attention entropy and paired deltas
    assert "<script>" in page and "<style>" in page
    # The same numbers as the markdown, Δ cells coloured by their interval, verdicts by their word.
    assert "62.5 ± 17.7 (n=2)" in page and "+18.8 [-60.7, +98.2] (n=2)" in page
    assert re.search(r'<td class="inconclusive">\+18\.8 \[-60\.7, \+98\.2\]', page)
    assert re.search(r'<td class="better">-0\.100 \[', page) is None  # entropy has no better direction
    assert '<li class="supported">' in page and '<li class="insufficient-evidence">' in page
    assert '<tr class="delta">' in page


def test_html_alone_draws_plots_in_a_temporary_folder(tmp_path, capsys):
    with fixed_store(tmp_path):
        pass
    assert main(["report", "--results", str(tmp_path), "--format", "html"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("cbbench.sqlite")) == ["fixture.html"]
    page = (tmp_path / "fixture.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2 and 'id="plots"' in page
    assert "wrote " in capsys.readouterr().out


def test_all_formats_and_the_empty_store_message(tmp_path, capsys):
    with fixed_store(tmp_path):
        pass
    names = sorted(p.name for p in write_reports(tmp_path, None, ("md", "csv", "json", "html")))
    assert names == ["fixture.csv", "fixture.html", "fixture.json", "fixture.md"]
    empty = tmp_path / "empty"
    from cbbench.store import Store

    Store(empty).close()
    capsys.readouterr()
    for fmt in ("md", "html"):
        assert main(["report", "--results", str(empty), "--format", fmt]) == 2  # nothing written: not a success
        assert "has no results for any suite; nothing to report" in capsys.readouterr().err


def test_format_validation_names_html(capsys):
    try:
        main(["report", "--format", "md,pdf"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "choose from md, csv, json, html" in capsys.readouterr().err
