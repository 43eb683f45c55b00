"""``--wandb`` / ``--tensorboard``: the headline metric of each cell sent to the tracker a lab already uses.

Both are optional extras (``pip install 'cbbench[wandb]'`` / ``'cbbench[tensorboard]'``): cbbench never
needs them, so they are checked before a run starts (a missing package must not surface after an hour
of evaluation) and imported only here.
"""
from __future__ import annotations

from pathlib import Path

INSTALL = {"wandb": "pip install 'cbbench[wandb]' (or: pip install wandb)",
           "tensorboard": "pip install 'cbbench[tensorboard]' (or: pip install tensorboard)"}


def require(wandb: bool = False, tensorboard: bool = False) -> None:
    """ValueError naming the pip command for each requested tracker that is not installed."""
    if wandb:
        try:
            import wandb as _  # noqa: F401
        except ImportError:
            raise ValueError(f"--wandb needs the wandb package, which is not installed: {INSTALL['wandb']}") from None
    if tensorboard:
        try:
            from torch.utils import tensorboard as _  # noqa: F401,F811  (imports the tensorboard package)
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package, which is not installed: "
                             f"{INSTALL['tensorboard']}") from None


def headlines(results_dir: str | Path, suite: str) -> tuple[int | None, dict, list[dict]]:
    """(run id, run config, one record per finished cell: model, task, metric, value) of the suite's latest run."""
    from cbbench.report.leaderboard import _column
    from cbbench.store import Store

    with Store(results_dir) as store:
        shown = store.shown_cells(suite)
        if shown is None:
            return None, {}, []
        run, cells = shown
        run_id, config, cells = run.run_id, run.config, [c for c in cells if c.status == "ok"]
    records = []
    for c in cells:
        key = _column(c.task).key
        if isinstance(c.metrics.get(key), (int, float)):
            records.append({"model": c.model, "task": c.task, "metric": key, "value": float(c.metrics[key])})
    return run_id, config, records


def log_headlines(results_dir: str | Path, suite: str, wandb: bool = False, tensorboard: bool = False,
                  project: str = "cbbench") -> list[str]:
    """Send the headline metrics; returns one line per destination, for the CLI to print."""
    require(wandb, tensorboard)
    run_id, config, records = headlines(results_dir, suite)
    done = []
    if tensorboard and records:
        from torch.utils.tensorboard import SummaryWriter

        root = Path(results_dir) / "tensorboard" / suite
        for model in dict.fromkeys(r["model"] for r in records):
            from cbbench.samples import safe_name

            with SummaryWriter(log_dir=str(root / safe_name(model))) as writer:
                for r in records:
                    if r["model"] == model:
                        writer.add_scalar(f"{r['task']}/{r['metric']}", r["value"], global_step=run_id)
        done.append(f"tensorboard: {root} (tensorboard --logdir {root})")
    if wandb and records:
        import wandb as wb

        run = wb.init(project=project, name=f"{suite}-run{run_id}", job_type="eval", config=config)
        run.summary.update({f"{r['model']}/{r['task']}/{r['metric']}": r["value"] for r in records})
        run.log({"headlines": wb.Table(columns=list(records[0]), data=[list(r.values()) for r in records])})
        done.append(f"wandb: {run.url or run.name}")
        run.finish()
    return done
