"""Markdown leaderboards: one row per model, each CB model beside its baseline with the paired difference.

Differences are CB minus baseline on the same images, with a 95% paired
bootstrap interval (images resampled) and, where outcomes are right/wrong per
image, McNemar's exact test. Everything is computed from the stored per-sample
outcomes of the suite's latest run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cbbench.metrics import cell_nonfinite, mcnemar_exact, paired_bootstrap_ci, seed_summary
from cbbench.report.arms import arm_baselines, seed_groups
from cbbench.report.broken import broken_models, withheld_note
from cbbench.report.files import write_atomic, write_text
from cbbench.report.pairing import is_cb_pair, pair_of
from cbbench.report.table import Table
from cbbench.store import Cell, Store, shown_run
from cbbench.tasks import TASKS
from cbbench.tasks.base import KINDS

# What `cbbench run` and `cbbench report` write per suite; html is one self-contained page (plots inline).
REPORT_FORMATS = ("md", "csv", "json", "html")
PAIRED_COLUMNS = ("comparison", "task", "metric", "n", "Δ [95% CI]", "fixes / breaks", "McNemar p")


def compared_side(models: list[str], specs: dict) -> str:
    """What the report calls the compared side of its pairs: "CB" when every pair is a CB twin and its baseline,
    else "model" (a suite may pair any change with a named baseline; only CB pairs have CB claims)."""
    bases = {m: pair_of(specs[m], specs) for m in models}
    return "CB" if all(is_cb_pair(specs[m], specs[b]) for m, b in bases.items() if b is not None) else "model"


def _paired_header(column: str, side: str) -> str:
    return f"{side} {column}" if column == "fixes / breaks" else column


def tone(low: float, high: float, higher_is_better: bool | None) -> str:
    """How a Δ interval reads: better / worse only when all of it lies on one side of 0 and the metric has a
    better direction, else inconclusive (the same rule as the plots' colours)."""
    if higher_is_better is None or not (low > 0 or high < 0):
        return "inconclusive"
    return "better" if (low > 0) == higher_is_better else "worse"


@dataclass
class SuiteReport:
    """A rendered suite. ``blocks`` are the markdown's lines, with tables kept as Table objects so that the
    HTML page is built from the same content; figure links in them are relative to ``figure_root``. It
    unpacks as (markdown, summary, paired, judged), what render_suite has always returned."""
    suite: str
    blocks: list
    summary: pd.DataFrame
    paired: list[dict]
    judged: list
    cells: dict
    figure_root: Path | None = None
    run_id: int | None = None  # the run shown

    @property
    def markdown(self) -> str:
        return "\n".join(map(str, self.blocks))

    def __iter__(self):
        return iter((self.markdown, self.summary, self.paired, self.judged))


@dataclass
class Column:
    task: str
    key: str
    label: str
    higher_is_better: bool | None
    percent: bool

    @property
    def header(self) -> str:
        arrow = {True: " ↑", False: " ↓", None: ""}[self.higher_is_better]
        return f"{self.label}{arrow}"

    def fmt(self, value: float | None) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "–"
        return f"{100 * value:.1f}" if self.percent else f"{value:.3f}"

    def fmt_delta(self, delta: float, low: float, high: float) -> str:
        scale, digits = (100, 1) if self.percent else (1, 3)
        return f"{scale * delta:+.{digits}f} [{scale * low:+.{digits}f}, {scale * high:+.{digits}f}]"


def _column(task_name: str) -> Column:
    task = TASKS.get(task_name) if task_name in TASKS else None
    if task is None:
        return Column(task_name, "accuracy", task_name, True, True)
    h = task.headline
    return Column(task_name, h.key, h.label, h.higher_is_better, h.percent)


def per_sample(cell: Cell) -> np.ndarray | None:
    """The per-image quantity whose mean is the headline (correctness, attention entropy, ECE share)."""
    key = TASKS.get(cell.task).headline.samples if cell.task in TASKS else "correct"
    values = cell.samples.get(key) if key else None
    if values is None or values.ndim == 1:
        return values
    return values.reshape(len(values), -1).mean(axis=1)


def paired_rows(cells: dict[tuple[str, str], Cell], models: list[str], specs: dict, tasks: list[str]) -> list[dict]:
    rows, side, broken = [], compared_side(models, specs), broken_models(cells)
    for model in models:
        base = pair_of(specs[model], specs)
        if base is None or model in broken or base in broken:  # the table and verdicts say why
            continue
        for task in tasks:
            a, b = cells.get((base, task)), cells.get((model, task))
            if not (a and b and a.status == b.status == "ok") or cell_nonfinite(a) or cell_nonfinite(b):
                continue  # non-finite outputs: the table says so, no statistics
            col = _column(task)
            xa, xb = per_sample(a), per_sample(b)
            if xa is None or xb is None:  # e.g. throughput: no per-image outcome to pair
                continue
            row = {"comparison": f"{model} − {base}", "task": task, "metric": col.header, "n": len(xa),
                   "percent": col.percent}
            delta, low, high = paired_bootstrap_ci(xa, xb, n_boot=2000, seed=0)
            row["Δ [95% CI]"] = col.fmt_delta(delta, low, high)
            row["_delta"], row["_low"], row["_high"] = delta, low, high
            row["_tones"] = {"Δ [95% CI]": tone(low, high, col.higher_is_better)}
            fixes = _paired_header("fixes / breaks", side)
            if xa.dtype == bool:
                n01, n10, p = mcnemar_exact(xa, xb)
                row[fixes] = f"{n01} / {n10}"
                row["McNemar p"] = f"{p:.3g}"
            else:
                row[fixes], row["McNemar p"] = "n/a", "n/a"
            rows.append(row)
    return rows


def seed_rows(cells, models: list[str], specs: dict, columns: list[Column], paired: list[dict]) -> list[dict]:
    """The headline table of a suite with training seeds: mean ± std of each arm across its seeds, and for
    each CB arm the mean of its per-seed paired Δ with a 95% t-interval across seeds."""
    from cbbench.report.claims import t_interval

    groups = seed_groups(models, specs)
    broken = broken_models(cells)
    delta_by = {(r["comparison"], r["task"]): r["_delta"] for r in paired}
    rows = []
    for members in groups.values():
        if len(members) < 2:
            continue
        cb = bool(specs[members[0]].get("cb"))
        label = f"{members[0]} ×{len(members)} seeds" + (" (CB)" if cb else "")
        row = {"arm": label, "seeds": ", ".join(str(specs[m]["seed"]) for m in members)}
        for col in columns:
            ok = [cells[(m, col.task)] for m in members if (m, col.task) in cells and cells[(m, col.task)].status == "ok"]
            bad = sum(cell_nonfinite(c) > 0 for c in ok)
            row[col.header] = (f"{bad} seed(s) non-finite" if bad else
                               _mean_std(col, [c.metrics.get(col.key) for c in ok]))
        rows.append(row)
        bases = arm_baselines(members, specs, groups)
        if bases is not None:
            drow = {"arm": f"Δ {'CB' if cb else 'model'} − baseline [95% t-interval across seeds]",
                    "seeds": f"{len(members)} pairs"}
            withheld = withheld_note([*members, *bases], broken)
            for col in columns:
                if withheld:
                    drow[col.header] = withheld
                    continue
                deltas = [delta_by[(f"{m} − {b}", col.task)] for m, b in zip(members, bases)
                          if (f"{m} − {b}", col.task) in delta_by]
                finite = [d for d in deltas if np.isfinite(d)]
                if len(finite) < 2 or len(finite) < len(deltas):
                    drow[col.header] = "–" if not deltas else f"n={len(finite)} finite of {len(deltas)}"
                    continue
                mean, _, low, high = t_interval(finite)
                drow[col.header] = f"{col.fmt_delta(mean, low, high)} (n={len(finite)})"
                drow.setdefault("_tones", {})[col.header] = tone(low, high, col.higher_is_better)
            rows.append(drow)
    return rows


def _mean_std(col: Column, values: list, signed: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean, std, n = seed_summary(values)
    scale, digits = (100, 1) if col.percent else (1, 3)
    sign = "+" if signed else ""
    spread = "" if n < 2 else f" ± {scale * std:.{digits}f}"
    return f"{scale * mean:{sign}.{digits}f}{spread} (n={n})"


def _pick_run(store: Store, suite: str, run_id: int | None = None):
    """(run id, its config, its cells by (model, task), notes on newer runs not shown), or None if never run.

    Default: the latest run with numbers to show, each failed cell filled in with the latest finished cell of
    the same model and task from an earlier run on the same images. ``run_id``: exactly that run."""
    runs = store.runs(suite)
    shown = shown_run(runs)
    run = shown if run_id is None else next((r for r in runs if r.run_id == run_id), None)
    if run is None:
        if run_id is None:
            return None
        raise ValueError(f"run {run_id} is not a run of suite {suite!r}; 'cbbench runs' lists the runs")
    run_id, config = run.run_id, run.config
    cells = {(c.model, c.task): c for c in store.run_cells(run_id, fill_in=run is shown)}
    newer = [r for r in runs if r.run_id > run_id and r.finished is not None and r.failed]
    notes = [f"Run {r.run_id} ({_date(r.started)}) is newer but not shown: none of its {sum(r.counts.values())} "
             f"cells finished ({_counts(r.counts)}); its reasons: 'cbbench runs --suite {suite}', "
             f"'cbbench report --run {r.run_id}'." for r in newer]
    return run_id, config, cells, notes


def _date(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def render_suite(store: Store, suite: str, plot_dir: Path | None = None,
                 run_id: int | None = None) -> SuiteReport | None:
    """The suite's latest run (unpacks as markdown, summary table, paired comparisons, verdicts), or None if never run.

    With ``plot_dir`` (a sub-folder of the results directory), figures are drawn
    there and embedded with links relative to the results directory.
    """
    picked = _pick_run(store, suite, run_id)
    if picked is None:
        return None
    run_id, config, cells, run_notes = picked
    models = list(dict.fromkeys(m for m, _ in cells))
    tasks = list(dict.fromkeys(t for _, t in cells))
    specs = {m: next(c.model_spec for (mm, _), c in cells.items() if mm == m) for m in models}
    columns = [_column(t) for t in tasks]
    unpaired = [m for m in models if specs[m].get("cb") and pair_of(specs[m], specs) is None]
    run_notes = [*run_notes, *([f"{', '.join(unpaired)}: CB without a baseline in this run (none, or several, of "
                                "the same network without CB), so not compared; a suite file names one with "
                                "`baseline:`"] if unpaired else [])]

    # Order: each baseline followed by its CB twins (and other models compared with it).
    ordered = []
    for m in models:
        if pair_of(specs[m], specs) is None and m not in ordered:
            ordered.append(m)
            ordered += [t for t in models if pair_of(specs[t], specs) == m]
    ordered += [m for m in models if m not in ordered]

    paired = paired_rows(cells, ordered, specs, tasks)
    broken = broken_models(cells)
    delta_by = {(r["comparison"], r["task"]): r for r in paired}
    table, records = [], []
    for m in ordered:
        params = next((c.provenance.get("num_params") for (mm, _), c in cells.items()
                       if mm == m and c.provenance.get("num_params")), None)
        row = {"model": m + (" (CB)" if specs[m].get("cb") else ""),
               "params": f"{params / 1e6:.2f}M" if params else "–"}
        record = {"model": m, "cb": bool(specs[m].get("cb")), "baseline": pair_of(specs[m], specs),
                  "num_params": params}
        for col in columns:
            cell = cells.get((m, col.task))
            bad = cell_nonfinite(cell)
            value = cell.metrics.get(col.key) if cell and cell.status == "ok" and not bad else None
            row[col.header] = (f"non-finite on {bad} img" if bad else
                               col.fmt(value) if cell is None or cell.status == "ok" else cell.status)
            record[f"{col.task}.{col.key}"] = value
            if bad:
                record[f"{col.task}.nonfinite"] = bad
        table.append(row)
        records.append(record)
        base = pair_of(specs[m], specs)
        if base is not None:
            drow = {"model": f"Δ vs {base} [95% CI, images]", "params": ""}
            withheld = withheld_note([base, m], broken)
            for col in columns:
                r = delta_by.get((f"{m} − {base}", col.task))
                drow[col.header] = withheld if withheld else r["Δ [95% CI]"] if r else "–"
                if r and not withheld:
                    drow.setdefault("_tones", {})[col.header] = r["_tones"]["Δ [95% CI]"]
            table.append(drow)
    summary = pd.DataFrame(records)

    dataset = next(iter(cells.values())).dataset
    from cbbench.report.claims import judge_claims, table_rows

    seeded = any(len(g) > 1 for g in seed_groups(ordered, specs).values())
    judged = judge_claims(cells, specs)
    lines = [f"# cbbench leaderboard: suite `{suite}`", "",
             f"Dataset: `{dataset}` · run {run_id} · limit: {config.get('limit') or 'all images'} · "
             f"seed: {config.get('seed')}. Accuracies in %. ↑ higher is better; columns without an arrow "
             "have no better direction.", ""]
    lines += [f"> {note}" for note in run_notes] + ([""] if run_notes else [])
    lines += _verdict_section(judged, seeded)
    seeds = seed_rows(cells, ordered, specs, columns, paired) if seeded else []
    side = compared_side(ordered, specs)
    if seeds:
        lines += ["## Leaderboard across training seeds", "",
                  "Each arm: mean ± sample standard deviation over its training seeds. Δ: the mean of the per-seed "
                  f"paired differences ({side} seed k − baseline seed k on the same images) with a 95% Student-t "
                  "interval across seeds" + (", the interval the verdicts use." if side == "CB" else "."), "",
                  Table(seeds), ""]
    who = "CB" if side == "CB" else "each compared model (CB, or another change with a named baseline)"
    within = (f"Δ rows: {who} minus its baseline on the same images, 95% paired bootstrap interval (2,000 resamples "
              "of the images). Such an interval covers the sampling of test images within one training-seed "
              "pair only, not training randomness: another seed, or the same seed trained on another CPU, can "
              "move the difference by more than its width.")
    lines += ["## Per training seed" if seeds else "## Leaderboard", "", within, "",
              Table(table), ""]
    if paired:
        fixes = _paired_header("fixes / breaks", side)
        lines += [f"## {side[0].upper()}{side[1:]} vs baseline within one seed pair, paired over images", "",
                  f"\"{fixes}\": images the baseline gets wrong and {'CB' if side == 'CB' else 'the model'} right / "
                  "the reverse; "
                  "McNemar's exact test on those discordant images. n/a where the per-image outcome is not "
                  "right/wrong (corruption accuracy averaged over cells, attention entropy). Like the bootstrap "
                  "intervals, these tests treat the two trained models as fixed.", "",
                  Table([{k: r[k] for k in (*(_paired_header(c, side) for c in PAIRED_COLUMNS), "_tones")}
                         for r in paired]), ""]
    if plot_dir is not None:
        from cbbench.report.plots import make_plots

        figures = make_plots(list(cells.values()), paired, plot_dir, suite)
        if figures:
            lines += ["## Plots", ""]
            for caption, path in figures:
                lines += [f"![{caption}]({plot_dir.name}/{path.name})", "", f"*{caption}*", ""]
    if seeded and judged:
        lines += ["## The paper's claims: the numbers behind the verdicts", "",
                  "Per-seed paired differences (CB seed k − baseline seed k), their mean ± sample std, the 95% "
                  "Student-t interval across seeds, and the two-sided p of the t-test behind it (Welch's for the "
                  "comparison of sizes) with, in brackets, its value after Holm's correction over the claims "
                  "judged here, which decides the verdict.", "",
                  Table(table_rows(judged)), ""]
    lines += _details(cells, ordered, tasks)
    lines += _protocols(tasks, cells)
    skipped = skipped_files(cells)
    if skipped:
        lines += ["## Files skipped", "", "Image files that could not be decoded; they are left out of every number "
                  "of the task (the count and the first paths):", ""]
        lines += [f"- `{s['task']}`: {s['note']}" for s in skipped] + [""]
    problems = [(m, t, c) for (m, t), c in cells.items() if c.status != "ok" or c.note]
    if problems:
        lines += ["## Skipped or failed", ""]
        lines += [f"- `{t}` on `{m}`: " + (f"**{c.status}**: {c.reason}" if c.status != "ok" else c.note)
                  for m, t, c in problems]
        lines.append("")
    lines += _provenance(cells, config, ordered)
    return SuiteReport(suite, lines, summary, paired, judged, cells, plot_dir.parent if plot_dir else None, run_id)


def _verdict_section(judged, seeded: bool) -> list[str]:
    """The answer first: each claim this run tests, in sentences a reader can quote."""
    from cbbench.report.claims import sentence

    if not judged:
        return []
    lines = ["## Verdict", ""]
    if not seeded:
        lines += ["This run has one training seed per arm, so it gives **no verdict** on any claim: the "
                  "intervals below cover the sampling of test images only, not training randomness, which moves "
                  "a single pair's difference by more than CB does. Run a suite with several training seeds per "
                  "arm (`robustness` and `paper` have them) to judge the claims.", ""]
    else:
        lines += ["Each claim is judged from the per-seed paired differences (CB seed k − baseline seed k): "
                  "**supported** or **contradicted** when the whole 95% t-interval across training seeds lies on "
                  "one side of 0 and that still holds after Holm's correction for the number of claims this run "
                  "judges (so that, if CB changed nothing, all of them would be right with probability at least "
                  "95%), otherwise **insufficient evidence**. These are statements about this recipe, these model "
                  "sizes and this data, at the number of seeds shown.", ""]
    return lines + [sentence(j) for j in judged] + [""]


def _details(cells, models, tasks) -> list:
    """Each task's detail section (``Task.details``), from its stored cells. Tasks that share a hook (e.g. every
    attack: one adversarial table) get one call with all their cells; sections follow the order of task KINDS."""
    groups: dict = {}
    for t in tasks:
        if t in TASKS:
            task = TASKS.get(t)
            groups.setdefault(type(task).details, (task, []))[1].append(t)
    lines = []
    for task, names in sorted(groups.values(), key=lambda g: KINDS.index(g[0].kind)):
        lines += task.details({(m, t): cells[(m, t)] for t in names for m in models if (m, t) in cells}, models)
    return lines


def _protocols(tasks, cells) -> list[str]:
    lines = ["## Protocols", ""]
    for t in tasks:
        cell = next((c for (m, tt), c in cells.items() if tt == t), None)
        version = cell.task_version if cell else "?"
        protocol = ((cell.provenance or {}).get("protocol") if cell else None) or (  # the cell's own: a suite
            TASKS.get(t).protocol if t in TASKS else "unknown task")                # file may set its parameters
        lines.append(f"- `{t}` v{version}: {protocol}")
    return lines + [""]


def _provenance(cells, config, models) -> list[str]:
    """What the numbers depend on: packages, CPU and device, and each model's weights and where it was trained."""
    ok = [c for c in cells.values() if c.status == "ok"]
    if not ok:
        return []
    prov = max(ok, key=lambda c: c.created).provenance
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
    total = sum(c.wall_s or 0 for c in ok)
    engines = sorted({f"yes ({c.task_params['engine']})" for c in ok if c.task_params.get("engine")})
    lines = ["## Provenance", "",
             f"- packages: {versions}; Python {prov.get('python')}",
             f"- device: {prov.get('device')}, {prov.get('threads')} threads"
             + (f"; CPU {prov['cpu']} ({prov.get('cpu_capability')} kernels)" if prov.get("cpu") else "")
             + f"; latest cell computed {prov.get('date')}",
             f"- compute time of the cells in this table: {total:.0f} s (cells reused from the store "
             "keep their original time)",
             f"- corruptions generated on the fly: {', '.join(engines) if engines else 'n/a'}",
             *_pipeline_lines(ok),
             f"- run configuration: `{json.dumps({k: v for k, v in config.items() if v is not None})}`"]
    weights = []
    for m in models:
        cell = next((c for c in ok if c.model == m and c.provenance.get("weights_digest")), None)
        if cell is None:
            continue
        trained = cell.provenance.get("trained_on")
        where = (f", trained by cbbench on {trained.get('device')} / {trained.get('cpu')} "
                 f"({trained.get('cpu_capability')} kernels, {trained.get('threads')} thread(s), torch "
                 f"{trained.get('torch')})") if trained else ""
        weights.append(f"  - `{m}`: weights sha256 {cell.provenance['weights_digest']}…{where}")
    if weights:
        lines += ["- models (weights digest; trained weights depend on the CPU type and torch version, so "
                  "another machine gives other weights and other per-seed numbers):", *weights]
    return lines + [""]


def _pipeline_lines(ok) -> list[str]:
    """How the evaluation forwards ran (amp, channels-last, compile) and what the batch loop had to adapt."""
    seen = [c.provenance["pipeline"] for c in ok if isinstance(c.provenance.get("pipeline"), dict)]
    if not seen:  # cells stored before the pipeline was recorded
        return []
    ways = sorted({f"amp {p.get('amp')}, channels-last {'yes' if p.get('channels_last') else 'no'}, "
                   f"torch.compile {'yes' if p.get('compile') else 'no'}" for p in seen})
    notes = sorted({n for p in seen for n in p.get("notes", [])})
    return ([f"- evaluation forward: {'; '.join(ways)}"
             + (f" ({len(ok) - len(seen)} cells without a record)" if len(seen) < len(ok) else "")]
            + [f"- batch loop: {n}" for n in notes])


def write_reports(results_dir: str | Path, suites: list[str] | None = None,
                  formats: tuple[str, ...] = REPORT_FORMATS, run_id: int | None = None) -> list[Path]:
    """Render the latest run of each suite (or run ``run_id``) into ``results_dir``; returns the files written.
    Each file is written whole (temporary file, then rename): a failure leaves the previous report."""
    results_dir = Path(results_dir)
    written = []
    with Store(results_dir) as store:
        for suite in suites or store.suites():
            rendered = render_suite(store, suite, results_dir / "plots" if "md" in formats else None, run_id)
            if rendered is None:
                continue
            markdown, summary, paired, judged = rendered
            if "md" in formats:
                written.append(write_text(results_dir / f"{suite}.md", markdown))
            if "csv" in formats:
                written.append(write_atomic(results_dir / f"{suite}.csv", lambda tmp: summary.to_csv(tmp, index=False)))
            if "json" in formats:
                document = {"run": rendered.run_id, "verdicts": [j.to_json() for j in judged],
                            "summary": summary.to_dict(orient="records"), "paired": [
                    {k.lstrip("_"): v for k, v in r.items() if k in ("comparison", "task", "n", "_delta", "_low", "_high",
                                                                    "McNemar p")} for r in paired],
                            "problems": [{"model": c.model, "task": c.task, "status": c.status, "reason": c.reason,
                                          "note": c.note} for c in rendered.cells.values() if c.status != "ok" or c.note],
                            "skipped_files": skipped_files(rendered.cells)}
                written.append(write_text(results_dir / f"{suite}.json",
                                          json.dumps(strict_json(document), indent=2, allow_nan=False)))
            if "html" in formats:
                from cbbench.report.html import render_html

                written.append(write_text(results_dir / f"{suite}.html", render_html(rendered)))
    return written


def skipped_files(cells: dict) -> list[dict]:
    """Image files a task could not decode (and left out of its numbers), once per task and dataset: every
    model saw the same files."""
    seen = {}
    for c in cells.values():
        for note in c.provenance.get("notes", []) if c.status == "ok" else []:
            if "corrupt image file" in note:
                seen.setdefault((c.task, note), {"task": c.task, "dataset": c.dataset, "note": note})
    return list(seen.values())


def strict_json(value):
    """NaN and infinities as null: bare NaN is not JSON (strict parsers such as JavaScript's reject it)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, np.generic):
        return strict_json(value.item())
    return value
