"""Where data, checkpoints and results live: command line, then environment, then defaults.

Resolved when asked, never at import time, so tests and users can redirect
everything with environment variables.
"""
from __future__ import annotations

import os
from pathlib import Path


def data_root(cli_value: str | os.PathLike | None = None) -> Path | None:
    """The data root (``--data-root`` or ``CBBENCH_DATA``); None means the embedded default."""
    value = cli_value or os.environ.get("CBBENCH_DATA")
    if not value:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist or is not a folder. Create it with one sub-folder "
            "per dataset (see datasets/README.md), or drop --data-root/CBBENCH_DATA to run the "
            "embedded default benchmark."
        )
    return root


def checkpoint_dir(cli_value: str | os.PathLike | None = None) -> Path:
    """Where trained demo checkpoints are cached (``CBBENCH_CKPT``, else the user cache dir)."""
    value = cli_value or os.environ.get("CBBENCH_CKPT")
    if value:
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            raise ValueError(f"checkpoint directory {path} (--checkpoints or CBBENCH_CKPT) is not a folder; point "
                             "it at a folder (created if missing), or unset CBBENCH_CKPT for the user cache")
        return path
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("cbbench")) / "checkpoints"


def results_dir(cli_value: str | os.PathLike | None = None) -> Path:
    """Where the results store and reports go (``--results``, ``CBBENCH_RESULTS``, else ./results)."""
    if cli_value is not None and not str(cli_value).strip():  # e.g. --results "$UNSET_VARIABLE"
        raise ValueError("--results is empty; give a folder (or leave it out for ./results)")
    value = cli_value or os.environ.get("CBBENCH_RESULTS") or "results"
    return Path(value).expanduser()
