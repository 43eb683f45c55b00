"""Reports: rendered from the results store alone, never by re-running a model."""
from cbbench.report.leaderboard import render_suite, write_reports

__all__ = ["render_suite", "write_reports"]
