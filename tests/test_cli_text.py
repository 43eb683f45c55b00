"""CLI text written for users: the top-level description, help on every option, `ls tasks` within the terminal."""
from __future__ import annotations

import argparse

import pytest

from cbbench.cli import build_parser, main


def actions(parser, path="cbbench"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_top_level_help_says_what_cbbench_is_and_the_common_commands():
    text = build_parser().format_help()
    assert "Context" in text and "Broadcasting" in text
    assert "cbbench run " in text and "cbbench report --format html" in text


def test_every_option_has_help():
    missing = [f"{path} {a.option_strings or a.dest}" for path, a in actions(build_parser()) if not a.help]
    assert not missing, missing


@pytest.mark.parametrize("columns", [80, 120])
def test_ls_tasks_wraps_to_the_terminal(monkeypatch, capsys, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["ls", "tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 10 and max(map(len, lines)) <= columns
