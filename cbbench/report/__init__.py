"""Reports: rendered from the results store alone, never by re-running a model."""
from cbbench.report.leaderboard import REPORT_FORMATS, render_suite, write_reports

__all__ = ["REPORT_FORMATS", "render_suite", "write_reports"]
