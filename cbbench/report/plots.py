"""Figures for a suite's report: corruption curves, adversarial accuracy, attention entropy, paired deltas.

Everything is drawn from stored cells (and the paired rows of the leaderboard),
never by re-running a model. matplotlib is imported inside the functions, so
importing this module costs nothing; figures are built with the object API
(``matplotlib.figure.Figure``, rendered by Agg), which touches no global pyplot
state and no interactive backend, and every figure is released after saving.

Models are drawn in the order they first appear in the cells. A CB model gets
the colour of its baseline (its named ``model_spec["baseline"]``, else the one
non-CB model of the same architecture), drawn dashed; baselines are solid.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbbench.corruptions.catalog import FAMILIES
from cbbench.report.pairing import pair_of
from cbbench.tasks import TASKS

DPI = 110

_FAMILY_OF = {c: f for f, cs in FAMILIES.items() for c in cs}

# Colour-blind-friendly (Okabe-Ito) colours: one per baseline/CB pair, one per corruption in a panel.
_PAIR_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_CORRUPTION_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00")
_GOOD, _BAD, _NEUTRAL = "#1a9850", "#d73027", "#808080"


# ----------------------------------------------------------------------------- models and styles

@dataclass(frozen=True)
class _Style:
    colour: str
    linestyle: str
    variant: bool  # drawn as the compared side of a pair (dashed, squares, hatched)
    label: str


def _styles(cells) -> dict[str, _Style]:
    """Model name -> style, in order of first appearance; a CB model (or other variant) shares its baseline's
    colour."""
    specs: dict[str, dict] = {}
    for c in cells:
        specs.setdefault(c.model, c.model_spec or {})
    colour_of: dict[str, str] = {}
    styles: dict[str, _Style] = {}
    for model, spec in specs.items():
        base = pair_of(spec, specs)
        group = base if base is not None else model
        if group not in colour_of:
            colour_of[group] = _PAIR_COLOURS[len(colour_of) % len(_PAIR_COLOURS)]
        variant = base is not None or bool(spec.get("cb"))  # the compared side: CB, or another change
        label = f"{model} (CB)" if spec.get("cb") else model
        styles[model] = _Style(colour_of[group], "--" if variant else "-", variant, label)
    return styles


def _ok(cells, predicate) -> dict[str, object]:
    """model -> its ok cell matching ``predicate`` (the last one wins, as in the leaderboard)."""
    out: dict[str, object] = {}
    for c in cells:
        if c.status == "ok" and predicate(c):
            out[c.model] = c
    return out


def _drawn_in(cells, figure: str) -> list[str]:
    """The suite's tasks (sorted by name) that declare ``figure`` (``Task.figure``)."""
    names = {c.task for c in cells}
    return [t for t, task in TASKS.items() if t in names and task.figure == figure]


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure legends with (_legend_below)
    fig.get_layout_engine().set(w_pad=0.08, h_pad=0.06)  # inches: keep labels off the image edge
    return fig


def _legend_below(fig, handles, ncol: int, **kw):
    """A figure legend below the axes with as many columns (at most ``ncol``) as fit the figure's width:
    a legend wider than the figure is cut off at both sides of the saved image."""
    for n in range(max(1, ncol), 0, -1):
        legend = fig.legend(handles=handles, loc="outside lower center", ncol=n, **kw)
        if n == 1 or legend.get_window_extent(fig.canvas.get_renderer()).width <= 0.97 * fig.bbox.width:
            return legend
        legend.remove()


def _legend_right(ax, **kw):
    """An axes legend just right of its axes: inside, even loc="best" covers lines when every corner has data."""
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kw)


def _save(fig, path) -> Path:
    from cbbench.report.files import write_atomic

    try:
        path = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"))
    finally:
        fig.clear()  # an object-API figure is not registered with pyplot; clearing frees its artists
    return path


def _pct(value) -> float:
    return 100 * float(value) if value is not None else float("nan")


def _dataset_note(cells) -> str:
    names = list(dict.fromkeys(c.dataset for c in cells))
    return f" ({', '.join(names)})" if names else ""


# ----------------------------------------------------------------------------- corruptions

def plot_corruption_severity(cells, path) -> Path | None:
    """Top-1 accuracy (%) vs severity, one panel per ImageNet-C family; None without an ok corruption cell.

    With one baseline/CB pair (or a single model) every corruption is drawn:
    colour = corruption, solid = baseline, dashed = CB. With more models that
    would be a tangle, so each panel shows the family-mean accuracy per model
    (thick, colour = pair) over faint per-corruption lines of the same style.
    """
    # One task's cells: the first by name (the reference engine's "corruptions" when a run has both engines).
    engine_task = next(iter(_drawn_in(cells, "severity")), None)
    ok = _ok(cells, lambda c: c.task == engine_task)
    if not ok:
        return None
    styles = _styles(cells)
    first = next(iter(ok.values()))
    corruptions = list(first.task_params.get("corruptions", ()))
    severities = [int(s) for s in first.task_params.get("severities", (1, 2, 3, 4, 5))]
    if not corruptions or not severities:
        return None
    families: dict[str, list[str]] = {}
    for c in corruptions:
        families.setdefault(_FAMILY_OF.get(c, "other"), []).append(c)
    order = [f for f in (*FAMILIES, "other") if f in families]
    # Every corruption drawn only while line style alone tells the models apart: one model, or baseline + CB.
    detailed = len(ok) == 1 or (len(ok) == 2 and len({styles[m].linestyle for m in ok}) == 2)

    ncols = 2 if len(order) > 1 else 1
    nrows = math.ceil(len(order) / ncols)
    fig = _new_figure((12 if ncols == 2 else 7.5) if detailed else (10 if ncols == 2 else 6.5), 3.3 * nrows + 1.1)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()

    def curve(cell, corruption):
        return [_pct(cell.metrics.get(f"accuracy/{corruption}/{s}")) for s in severities]

    for ax, family in zip(axes, order):
        names = families[family]
        for i, corruption in enumerate(names):
            colour = _CORRUPTION_COLOURS[i % len(_CORRUPTION_COLOURS)]
            for model, cell in ok.items():
                st = styles[model]
                if detailed:
                    ax.plot(severities, curve(cell, corruption), color=colour, linestyle=st.linestyle,
                            marker="o" if not st.variant else "s", markersize=4, linewidth=1.6,
                            label=corruption.replace("_", " ") if model == next(iter(ok)) else None)
                else:
                    ax.plot(severities, curve(cell, corruption), color=st.colour, linestyle=st.linestyle,
                            linewidth=0.8, alpha=0.35)
        if not detailed:
            for model, cell in ok.items():
                st = styles[model]
                with warnings.catch_warnings():  # a severity missing for every corruption stays NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    mean = np.nanmean([curve(cell, c) for c in names], axis=0)
                ax.plot(severities, mean, color=st.colour, linestyle=st.linestyle, linewidth=2.4,
                        marker="s" if st.variant else "o", markersize=4)
        ax.set_title(f"{family} ({len(names)} corruption{'s' if len(names) > 1 else ''})", fontsize=11)
        ax.set_ylim(0, 103)
        ax.set_yticks(range(0, 101, 20))
        ax.set_xticks(severities)
        ax.grid(True, alpha=0.3)
        if detailed:
            _legend_right(ax, fontsize=8, framealpha=0.85, title="corruption", title_fontsize=8)
    for ax in axes[len(order):]:
        ax.set_visible(False)
    for ax in axes.reshape(nrows, ncols)[:, 0]:
        ax.set_ylabel("top-1 accuracy (%)")
    for ax in axes.reshape(nrows, ncols)[-1, :]:
        ax.set_xlabel("severity (1 = mildest, 5 = strongest)")
        ax.tick_params(labelbottom=True)

    from matplotlib.lines import Line2D

    if detailed:
        handles = [Line2D([], [], color="#333333", linestyle=styles[m].linestyle,
                          marker="s" if styles[m].variant else "o", markersize=4, label=styles[m].label) for m in ok]
        how = "colour = corruption, line style = model"
    else:
        handles = [Line2D([], [], color=styles[m].colour, linestyle=styles[m].linestyle, linewidth=2.4,
                          marker="s" if styles[m].variant else "o", markersize=4, label=styles[m].label) for m in ok]
        how = "thick = family mean, faint = single corruptions"
    _legend_below(fig, handles, min(len(handles), 4), fontsize=9, title=how, title_fontsize=9)
    fig.suptitle(f"Common corruptions{_dataset_note(ok.values())}: accuracy vs severity", fontsize=13)
    return _save(fig, path)


# ----------------------------------------------------------------------------- adversarial

_SWEEP_PREFIX = "accuracy/eps/"


def _eps_value(text) -> float:
    from cbbench.attacks.epsilon import parse_pixel_value  # pure Python, no foolbox

    return parse_pixel_value(text, "eps")


def _sweep(cell) -> list[tuple[float, float]]:
    """(eps, robust accuracy) pairs of an epsilon-sweep cell, sorted by eps; [] for a fixed-eps attack."""
    points = []
    for key, value in cell.metrics.items():
        if key.startswith(_SWEEP_PREFIX):
            try:
                points.append((_eps_value(key[len(_SWEEP_PREFIX):]), float(value)))
            except ValueError:
                continue
    if points and not any(e == 0 for e, _ in points) and "clean_accuracy" in cell.metrics:
        points.append((0.0, float(cell.metrics["clean_accuracy"])))
    return sorted(points)


def _is_attack(cell) -> bool:
    return cell.task in TASKS and TASKS.get(cell.task).kind == "attack"


def plot_adversarial(cells, path) -> Path | None:
    """Robust accuracy (%) per attack task and model, with clean accuracy of the same images; None if no ok attack.

    Fixed-epsilon attacks: grouped bars (robust accuracy; hatched = CB), a black
    diamond at the clean accuracy of the same images. Epsilon sweeps (metrics
    ``accuracy/eps/{eps}``): robust accuracy vs epsilon, one line per model.
    """
    attack = [c for c in cells if c.status == "ok" and _is_attack(c)]
    if not attack:
        return None
    styles = _styles(cells)
    tasks = list(dict.fromkeys(c.task for c in attack))
    by_task = {t: _ok(attack, lambda c, t=t: c.task == t) for t in tasks}
    sweeps = [t for t in tasks if any(_sweep(c) for c in by_task[t].values())]
    fixed = [t for t in tasks if t not in sweeps]
    models = [m for m in styles if any(m in by_task[t] for t in tasks)]

    panels = (1 if fixed else 0) + len(sweeps)
    widths = ([1.0 + 0.12 * len(fixed) * len(models)] if fixed else []) + [1.3] * len(sweeps)
    legend_rows = math.ceil((len(models) + 1) / 4) if len(models) > 8 else 0  # the legend below grows with them
    fig = _new_figure(min(10.0, 3.0 + 2.4 * sum(widths)), (4.8 if panels == 1 else 5.0) + 0.24 * legend_rows)
    axes = fig.subplots(1, panels, squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if fixed:
        ax = axes[0]
        handles = []
        width = 0.8 / max(1, len(models))
        for j, model in enumerate(models):
            st = styles[model]
            xs, robust, clean = [], [], []
            for i, t in enumerate(fixed):
                cell = by_task[t].get(model)
                if cell is None:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                robust.append(_pct(cell.metrics.get("accuracy")))
                clean.append(_pct(cell.metrics.get("clean_accuracy")))
            if not xs:
                continue
            look = {"facecolor": st.colour, "alpha": 0.55 if st.variant else 0.9, "hatch": "//" if st.variant else None,
                    "edgecolor": st.colour if st.variant else "white"}
            bars = ax.bar(xs, robust, width=width * 0.92, linewidth=0.8, **look)
            if len(models) <= 12:  # more bars than that leave no room for their numbers (the tables have them)
                ax.bar_label(bars, labels=[f"{r:.0f}" for r in robust], label_type="center", fontsize=8,
                             bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none",
                                   "alpha": 0.85})
            ax.plot(xs, clean, linestyle="none", marker="D", markersize=6, color="black",
                    markerfacecolor="white", markeredgewidth=1.4, zorder=3)
            handles.append(Patch(label=st.label, **look))
        labels = []
        for t in fixed:
            eps = next(iter(by_task[t].values())).task_params.get("eps")
            labels.append(f"{t}\nε = {eps}" if eps is not None else t)
        ax.set_xticks(range(len(fixed)), labels)
        ax.set_xlim(-0.6, len(fixed) - 0.4)
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_xlabel("attack (L∞ budget ε in pixel units of [0, 1] images)")
        ax.set_title("robust accuracy per attack (bars)", fontsize=11)
        ax.grid(True, axis="y", alpha=0.3)
        handles.append(Line2D([], [], linestyle="none", marker="D", color="black", markerfacecolor="white",
                              markeredgewidth=1.4, label="clean acc. (same images)"))
        _legend_below(fig, handles, len(handles) if len(handles) <= 5 else math.ceil(len(handles) / 2), fontsize=9)
    for ax, t in zip(axes[1 if fixed else 0:], sweeps):
        all_eps = set()
        for model in models:
            cell = by_task[t].get(model)
            points = _sweep(cell) if cell is not None else []
            if not points:
                continue
            st = styles[model]
            all_eps.update(255 * e for e, _ in points)
            ax.plot([255 * e for e, _ in points], [_pct(a) for _, a in points], color=st.colour,
                    linestyle=st.linestyle, marker="s" if st.variant else "o", markersize=5, linewidth=1.8,
                    label=st.label)
        positive = [e for e in all_eps if e > 0]
        if positive and max(positive) / min(positive) > 16:
            ax.set_xscale("symlog", linthresh=min(positive))
        ticks = sorted(all_eps)
        if len(ticks) <= 10:
            ax.set_xticks(ticks, [f"{e:.3g}" for e in ticks])
        ax.set_ylim(0, 105)
        ax.set_xlabel("ε (L∞, in units of 1/255)")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_title(f"{t}: robust accuracy vs ε\n(ε = 0: clean accuracy)", fontsize=11)
        ax.grid(True, alpha=0.3)
        _legend_right(ax, fontsize=8, framealpha=0.85)
    fig.suptitle(f"L∞ attacks{_dataset_note(attack)}: robust accuracy", fontsize=13)
    return _save(fig, path)


# ----------------------------------------------------------------------------- attention entropy

def plot_attention_entropy(cells, path) -> Path | None:
    """Normalized attention entropy H/log N per layer, one line per model; None without an ok cell."""
    drawn = _drawn_in(cells, "attention_layers")
    ok = _ok(cells, lambda c: c.task in drawn)
    curves = {}
    for model, cell in ok.items():
        layers = sorted(int(k[len("entropy/layer"):]) for k in cell.metrics
                        if k.startswith("entropy/layer") and k[len("entropy/layer"):].isdigit())
        if layers:
            curves[model] = (layers, [float(cell.metrics[f"entropy/layer{i}"]) for i in layers])
    if not curves:
        return None
    styles = _styles(cells)
    n_layers = max(max(layers) for layers, _ in curves.values()) + 1
    many = len(curves) > 12  # a legend at the right would be taller than the figure: below, in columns
    legend_rows = math.ceil(len(curves) / 4) if many else 0
    fig = _new_figure(11.0 if many else min(12.0, max(8.5, 5.5 + 0.35 * n_layers)), 4.6 + 0.24 * legend_rows)
    ax = fig.subplots()
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1.2)
    ax.text(0.01, 1.0, "uniform attention (H/log N = 1)", transform=ax.get_yaxis_transform(),
            va="bottom", ha="left", fontsize=8)
    for model, (layers, values) in curves.items():
        st = styles[model]
        ax.plot(layers, values, color=st.colour, linestyle=st.linestyle, marker="s" if st.variant else "o",
                markersize=5, linewidth=1.8, label=st.label)
    ax.set_ylim(0, 1.08)
    ax.set_xlim(-0.4, n_layers - 0.6)
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("layer (transformer block index)")
    ax.set_ylabel("normalized entropy H / log N")
    ax.grid(True, alpha=0.3)
    if many:
        _legend_below(fig, ax.get_legend_handles_labels()[0], 4, fontsize=8.5)
    else:
        _legend_right(ax, fontsize=9, framealpha=0.9)
    ax.set_title(f"Attention entropy per layer{_dataset_note(ok.values())}\n"
                 "mean over images, heads and query rows; 1 = uniform, 0 = one-hot", fontsize=11)
    return _save(fig, path)


# ----------------------------------------------------------------------------- paired deltas

def _direction(metric: str) -> bool | None:
    if "↑" in metric:
        return True
    if "↓" in metric:
        return False
    return None


def _is_percent(row: dict) -> bool:
    if "percent" in row:  # the leaderboard's paired rows always say
        return bool(row["percent"])
    return "entropy" not in f"{row.get('task', '')} {row.get('metric', '')}".lower()


def _verdict(row: dict) -> str:
    better = _direction(str(row.get("metric", "")))
    low, high = float(row["_low"]), float(row["_high"])
    if better is None or not (low > 0 or high < 0):
        return _NEUTRAL
    return _GOOD if (low > 0) == better else _BAD


def plot_deltas(paired: list[dict], path, side: str = "CB") -> Path | None:
    """Forest plot of ``side`` (CB, or "model" for other changes) − baseline with 95% CIs, percent metrics (pp)
    and raw ones in separate panels."""
    rows = [r for r in paired or [] if all(k in r for k in ("_delta", "_low", "_high"))
            and all(math.isfinite(float(r[k])) for k in ("_delta", "_low", "_high"))]
    if not rows:
        return None
    comparisons = list(dict.fromkeys(r.get("comparison", "") for r in rows))
    groups = [(True, [r for r in rows if _is_percent(r)]), (False, [r for r in rows if not _is_percent(r)])]
    groups = [(p, rs) for p, rs in groups if rs]
    heights = [len(rs) + 1.2 for _, rs in groups]
    fig = _new_figure(9.0, 1.3 + 0.42 * sum(heights))
    axes = fig.subplots(len(groups), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]

    for ax, (percent, rs) in zip(axes, groups):
        scale, digits = (100.0, 1) if percent else (1.0, 3)
        ys = list(range(len(rs)))[::-1]
        labels = []
        for y, r in zip(ys, rs):
            d, lo, hi = (scale * float(r[k]) for k in ("_delta", "_low", "_high"))
            colour = _verdict(r)
            ax.errorbar([d], [y], xerr=[[max(d - lo, 0)], [max(hi - d, 0)]], fmt="o", color=colour,
                        ecolor=colour, elinewidth=2.2, capsize=4, markersize=7)
            text = f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]".replace("-", "−")
            ax.annotate(text, (1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8.5,
                        color=colour, annotation_clip=False)
            label = f"{r.get('metric', r.get('task', '?'))}"
            if len(comparisons) > 1:
                label += f"\n{r.get('comparison', '')}"
            labels.append(label)
        for y, (above, below) in zip(ys[1:], zip(rs, rs[1:])):
            if above.get("comparison") != below.get("comparison"):  # separate the comparisons
                ax.axhline(y + 0.5, color="#bbbbbb", linewidth=0.8)
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(ys, labels, fontsize=9)
        ax.set_ylim(-0.7, len(rs) - 0.3)
        lo_all = min(scale * float(r["_low"]) for r in rs)
        hi_all = max(scale * float(r["_high"]) for r in rs)
        span = max(hi_all, 0) - min(lo_all, 0) or (1.0 if percent else 0.01)
        ax.set_xlim(min(lo_all, 0) - 0.08 * span, max(hi_all, 0) + 0.08 * span)
        ax.grid(True, axis="x", alpha=0.3)
        if percent:
            ax.set_xlabel(f"Δ, {side} − baseline (percentage points)")
        elif all("entropy" in f"{r.get('task', '')} {r.get('metric', '')}".lower() for r in rs):
            ax.set_xlabel(f"Δ normalized attention entropy H/log N (unitless, 0-1 scale), {side} − baseline")
        else:
            ax.set_xlabel(f"Δ in each metric's own units (not %), {side} − baseline")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", linewidth=2.2, label=lab) for c, lab in
               ((_GOOD, "CI entirely on the better side"), (_BAD, "CI entirely on the worse side"),
                (_NEUTRAL, "CI includes 0, or no better direction"))]
    _legend_below(fig, handles, 3, fontsize=8.5)
    title = "CB vs baseline: paired differences, 95% bootstrap CI"
    if len(comparisons) == 1:
        title += f"\n{comparisons[0]}"
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


# ----------------------------------------------------------------------------- all of them

def make_plots(cells, paired: list[dict], out_dir, prefix: str) -> list[tuple[str, Path]]:
    """Write ``{out_dir}/{prefix}_{corruptions,adversarial,attention,deltas}.png``; (caption, path) of those made."""
    out_dir = Path(out_dir)
    cells = list(cells or [])
    attack = [c for c in cells if c.status == "ok" and _is_attack(c)]
    has_sweep = any(_sweep(c) for c in attack)
    sweep_only = has_sweep and all(_sweep(c) for c in attack)
    specs = {c.model: c.model_spec or {} for c in cells}
    side = "CB" if all(specs.get(r["comparison"].split(" − ")[0], {}).get("cb") for r in paired or []) else "model"
    jobs = [
        ("corruptions", lambda p: plot_corruption_severity(cells, p),
         "Top-1 accuracy (%) under each ImageNet-C corruption against severity 1-5, one panel per family, "
         f"baselines solid and {'CB' if side == 'CB' else 'compared'} models dashed."),
        ("adversarial", lambda p: plot_adversarial(cells, p),
         "Robust accuracy (%) of each model against epsilon under white-box L∞ attacks, from clean accuracy "
         "at ε = 0." if sweep_only else
         "Robust accuracy (%) of each model under each L∞ attack (white-box, or transferred from its pair), with the clean accuracy of the "
         "same images marked" + (" and epsilon sweeps drawn against ε." if has_sweep else ".")),
        ("attention", lambda p: plot_attention_entropy(cells, p),
         "Normalized attention entropy H/log N per transformer layer for each model (1 = uniform attention)."),
        ("deltas", lambda p: plot_deltas(paired, p, side),
         f"Paired {side} − baseline differences with 95% bootstrap intervals (green: better, red: worse, "
         "grey: inconclusive)."),
    ]
    made = []
    for name, draw, caption in jobs:
        target = out_dir / f"{prefix}_{name}.png"
        result = draw(target)
        if result is not None:
            made.append((caption, result))
    return made
