"""Report figures from made-up cells: files are produced, are PNGs, and empty input produces nothing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbbench.corruptions.catalog import BENCHMARK_CORRUPTIONS as CORRUPTIONS
from cbbench.corruptions.catalog import SEVERITIES
from cbbench.report import plots
from cbbench.store import Cell

ATTACKS = (("fgsm", "fgsm", "1/255"), ("pgd", "pgd", "1/255"), ("pgd_strong", "pgd", "4/255"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

BASE = {"arch": "demo", "cb": False}
CB = {"arch": "demo", "cb": True, "baseline": "demo_vit"}


def make_cell(model: str, spec: dict, task: str, params: dict, metrics: dict, status: str = "ok") -> Cell:
    return Cell(key=f"{model}-{task}", model=model, model_spec=spec, task=task, task_version=1, task_params=params,
                dataset="digits", limit=None, seed=0, status=status, reason=None if status == "ok" else "test",
                metrics=metrics if status == "ok" else {}, provenance={}, wall_s=1.0, created=0.0)


def fake_cells(status: str = "ok", sweep: bool = False, models=(("demo_vit", BASE), ("demo_vit_cb", CB)),
               layers: int = 4) -> list[Cell]:
    rng = np.random.default_rng(0)
    cells = []
    for k, (model, spec) in enumerate(models):
        bonus = 0.04 * k
        m = {}
        for i, c in enumerate(CORRUPTIONS):
            start, slope = 0.95 - 0.02 * (i % 4), 0.05 + 0.03 * (i % 5)
            for s in SEVERITIES:
                m[f"accuracy/{c}/{s}"] = float(np.clip(start - slope * (s - 1) + bonus + rng.normal(0, 0.01), 0, 1))
            m[f"accuracy/{c}"] = float(np.mean([m[f"accuracy/{c}/{s}"] for s in SEVERITIES]))
        for s in SEVERITIES:
            m[f"accuracy/severity{s}"] = float(np.mean([m[f"accuracy/{c}/{s}"] for c in CORRUPTIONS]))
        m["mean_accuracy"] = float(np.mean([m[f"accuracy/severity{s}"] for s in SEVERITIES]))
        cells.append(make_cell(model, spec, "corruptions",
                               {"corruptions": list(CORRUPTIONS), "severities": list(SEVERITIES)}, m, status))
        for j, (task, attack, eps) in enumerate(ATTACKS):
            metrics = {"accuracy": 0.6 - 0.25 * j + bonus, "clean_accuracy": 0.95, "attack_success_rate": 0.3}
            cells.append(make_cell(model, spec, task, {"attack": attack, "eps": eps, "steps": 5}, metrics, status))
        if sweep:
            metrics = {"accuracy": 0.3 + bonus, "clean_accuracy": 0.95}
            for e in (1, 2, 4, 8):
                metrics[f"accuracy/eps/{e}/255"] = float(0.95 * np.exp(-e / 3) + bonus)
            cells.append(make_cell(model, spec, "pgd_sweep", {"attack": "pgd", "eps": "8/255",
                                                              "eps_list": ["1/255", "2/255", "4/255", "8/255"]},
                                   metrics, status))
        ent = {f"entropy/layer{i}": 0.92 - 0.5 * i / max(1, layers - 1) - 0.05 * k for i in range(layers)}
        ent["mean_entropy"] = float(np.mean(list(ent.values())))
        cells.append(make_cell(model, spec, "attention_entropy", {}, ent, status))
    return cells


def fake_paired() -> list[dict]:
    comparison = "demo_vit_cb − demo_vit"
    rows = [("clean", "clean top-1 ↑", 0.012, -0.004, 0.028),
            ("corruptions", "corruption acc. (mean 15x5) ↑", 0.031, 0.018, 0.044),
            ("fgsm", "fgsm robust acc. ↑", -0.041, -0.066, -0.017),
            ("pgd", "pgd robust acc. ↑", 0.006, -0.010, 0.022),
            ("pgd_strong", "pgd_strong robust acc. ↑", 0.002, -0.001, 0.005),
            ("attention_entropy", "attn. entropy (H/log N)", -0.052, -0.061, -0.043)]
    return [{"comparison": comparison, "task": t, "metric": m, "n": 500, "_delta": d, "_low": lo, "_high": hi}
            for t, m, d, lo, hi in rows]


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_make_plots_writes_all_four(tmp_path):
    made = plots.make_plots(fake_cells(), fake_paired(), tmp_path / "figs", "robustness")
    names = [p.name for _, p in made]
    assert names == ["robustness_corruptions.png", "robustness_adversarial.png", "robustness_attention.png",
                     "robustness_deltas.png"]
    for caption, path in made:
        assert_png(path)
        assert path.parent == tmp_path / "figs"
        assert caption.endswith(".") and len(caption) > 20


def test_variants_more_models_and_eps_sweep(tmp_path):
    models = (("demo_vit", BASE), ("demo_vit_cb", CB), ("vit_s", {"arch": "vit_s", "cb": False}),
              ("vit_s_cb", {"arch": "vit_s", "cb": True}))  # paired through the architecture
    cells = fake_cells(sweep=True, models=models, layers=12)
    assert_png(plots.plot_corruption_severity(cells, tmp_path / "c.png"))  # family-mean mode (> 2 models)
    assert_png(plots.plot_adversarial(cells, tmp_path / "a.png"))  # bars + an epsilon sweep panel
    assert_png(plots.plot_attention_entropy(cells, tmp_path / "e.png"))
    styles = plots._styles(cells)
    assert styles["vit_s_cb"].colour == styles["vit_s"].colour != styles["demo_vit"].colour
    assert styles["demo_vit_cb"].linestyle == "--" and styles["demo_vit"].linestyle == "-"
    # Percent-only and entropy-only paired rows each still make a figure.
    assert_png(plots.plot_deltas(fake_paired()[:-1], tmp_path / "d1.png"))
    assert plots.plot_deltas(fake_paired()[-1:], tmp_path / "d2.png").is_file()


def test_verdict_colours():
    good, bad, neutral = plots._GOOD, plots._BAD, plots._NEUTRAL
    row = {"metric": "acc ↑", "_delta": 0.02, "_low": 0.01, "_high": 0.03}
    assert plots._verdict(row) == good
    assert plots._verdict({**row, "metric": "error ↓"}) == bad
    assert plots._verdict({**row, "_low": -0.01}) == neutral
    assert plots._verdict({**row, "metric": "entropy"}) == neutral
    assert plots._verdict({"metric": "acc ↑", "_delta": -0.02, "_low": -0.03, "_high": -0.01}) == bad


@pytest.mark.parametrize("cells", [[], "skipped", "failed"])
def test_nothing_to_plot(tmp_path, cells):
    if isinstance(cells, str):
        cells = fake_cells(status=cells)
    out = tmp_path / "none"
    assert plots.plot_corruption_severity(cells, out / "c.png") is None
    assert plots.plot_adversarial(cells, out / "a.png") is None
    assert plots.plot_attention_entropy(cells, out / "e.png") is None
    assert plots.plot_deltas([], out / "d.png") is None
    assert plots.make_plots(cells, [], out, "x") == []
    assert not out.exists() or not any(out.iterdir())


def test_two_unpaired_baselines_and_missing_metrics(tmp_path):
    models = (("vit_a", {"arch": "a", "cb": False}), ("vit_b", {"arch": "b", "cb": False}))
    cells = fake_cells(models=models)
    for c in cells:
        if c.task == "corruptions":
            del c.metrics["accuracy/fog/3"]  # a hole in the grid is drawn as a gap, not an error
    styles = plots._styles(cells)
    assert styles["vit_a"].colour != styles["vit_b"].colour
    assert_png(plots.plot_corruption_severity(cells, tmp_path / "c.png"))


PAPER_MODELS = tuple((f"demo_vit{size}{cb}{seed}", {"arch": f"demo{size}", "cb": bool(cb), "seed": seed or 0,
                                                   **({"baseline": f"demo_vit{size}{seed}"} if cb else {})})
                     for size in ("", "_small") for cb in ("", "_cb") for seed in ("", "_s1", "_s2", "_s3", "_s4"))


ABLATION_MODELS = tuple((f"demo_vit{arm}{seed}", {"arch": "demo", "cb": bool(arm), "seed": seed or 0,
                                                  **({"baseline": f"demo_vit{seed}"} if arm else {})})
                        for arm in ("", "_cb", "_cb_attn", "_cb_both", "_cb_first2", "_cb_last2", "_cb_alpha025",
                                    "_cb_alpha075", "_cb_scaled")
                        for seed in ("", "_s1", "_s2", "_s3", "_s4"))
PAIR = (("demo_vit", BASE), ("demo_vit_cb", CB))


@pytest.mark.parametrize("models, sweep", [(PAIR, False), (PAPER_MODELS, False), (PAIR, True), (PAPER_MODELS, True),
                                           (ABLATION_MODELS, False)],
                         ids=["pair", "paper-20-models", "pair-sweep", "paper-20-models-sweep", "ablation-45-models"])
def test_legends_never_cover_or_clip_data(tmp_path, monkeypatch, models, sweep):
    """Every legend lies inside the figure (not clipped) and outside every axes' data area (covers nothing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    checked, save = [], plots._save

    def check_then_save(fig, path):
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)  # runs the constrained layout, as savefig does
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends, f"{Path(path).name}: no legend"
        for legend in legends:
            box = legend.get_window_extent(renderer)
            fig_box = fig.bbox
            assert (box.x0 >= fig_box.x0 - 1 and box.y0 >= fig_box.y0 - 1 and box.x1 <= fig_box.x1 + 1
                    and box.y1 <= fig_box.y1 + 1), f"{Path(path).name}: legend {box} clipped by the figure {fig_box}"
            for ax in fig.axes:
                if ax.get_visible():
                    assert not box.overlaps(ax.bbox), f"{Path(path).name}: legend {box} covers the axes {ax.bbox}"
        checked.append(Path(path).name)
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", check_then_save)
    cells = fake_cells(sweep=sweep, models=models)
    paired = [{**r, "comparison": f"{m} − {b}"} for m, b in (("demo_vit_cb", "demo_vit"), ("demo_vit_cb_s1", "demo_vit_s1"))
              for r in fake_paired()]
    plots.make_plots(cells, paired, tmp_path, "x")
    assert checked == ["x_corruptions.png", "x_adversarial.png", "x_attention.png", "x_deltas.png"]
