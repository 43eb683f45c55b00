"""The paper's claims next to what was measured, with intervals across training seeds.

Each claim is judged from per-seed paired differences (CB seed k minus baseline
seed k, same recipe and images): mean, sample std and a 95% t-interval across
seeds. "supported" / "contradicted" need the whole interval on one side of 0;
otherwise the evidence is called insufficient, which with 3 seeds is common.
"""
from __future__ import annotations

import json
import math

import numpy as np
from scipy import stats

from cbbench.report.pairing import pair_of

# (claim, task, metric key, percent?, sign that supports the claim)
DELTA_CLAIMS = [
    ("CB improves clean accuracy", "clean", "accuracy", True, +1),
    ("CB improves corruption robustness", "corruptions", "mean_accuracy", True, +1),
    ("CB improves adversarial robustness (FGSM)", "fgsm", "accuracy", True, +1),
    ("CB improves adversarial robustness (PGD)", "pgd", "accuracy", True, +1),
    ("CB improves generalization (linear probe)", "linear_probe", "accuracy", True, +1),
    ("CB improves generalization (fine-tuning)", "finetune", "accuracy", True, +1),
    ("CB lowers attention entropy (sparser maps)", "attention_entropy", "mean_entropy", False, -1),
]


def t_interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, std, low, high) with a 95% Student-t interval across seeds (nan bounds for one seed)."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(v) - 1)) * std / math.sqrt(len(v))
    return mean, std, mean - half, mean + half


def verdict(low: float, high: float, sign: int) -> str:
    if math.isnan(low):
        return "insufficient evidence (one seed: no spread)"
    if (low > 0 and sign > 0) or (high < 0 and sign < 0):
        return "**supported**"
    if (low > 0 and sign < 0) or (high < 0 and sign > 0):
        return "**contradicted**"
    return "insufficient evidence (interval includes 0)"


def _size_label(spec: dict) -> str:
    kw = spec.get("arch_kwargs", {})
    return f"depth {kw.get('depth', '?')}, dim {kw.get('embed_dim', '?')}" if kw else spec["arch"]


def _fmt(value: float, percent: bool) -> str:
    scale, digits = (100, 1) if percent else (1, 3)
    return "–" if math.isnan(value) else f"{scale * value:+.{digits}f}"


def claim_rows(cells: dict, specs: dict[str, dict]) -> list[dict]:
    """One row per (claim, model size) with the per-seed deltas, their mean, std and interval, and a verdict."""
    sizes: dict[str, list[tuple[str, str]]] = {}  # size -> [(cb model, its baseline)]
    for m, spec in specs.items():
        base = pair_of(spec, specs)
        if base is not None:
            key = json.dumps(spec.get("arch_kwargs", {}), sort_keys=True) + spec["arch"]
            sizes.setdefault(key, []).append((m, base))
    rows, gains = [], {}
    for pairs in sizes.values():
        size = _size_label(specs[pairs[0][0]])
        seeds = len(pairs)
        for claim, task, key, percent, sign in DELTA_CLAIMS:
            deltas = [cells[(m, task)].metrics[key] - cells[(b, task)].metrics[key] for m, b in pairs
                      if _ok(cells, m, task) and _ok(cells, b, task)]
            if not deltas:
                continue
            mean, std, low, high = t_interval(deltas)
            if task == "clean":
                gains[size] = deltas
            rows.append(_row(claim, size, deltas, mean, std, low, high, percent, verdict(low, high, sign)))
        extra = [cells[(m, "cost")].metrics.get("extra_params") for m, _ in pairs if _ok(cells, m, "cost")]
        if extra and None not in extra:
            rows.append({"claim": "CB adds no parameters", "model size": size, "seeds": seeds,
                         "per-seed values": ", ".join(f"{e:+,.0f}" for e in extra), "mean ± std": "",
                         "95% interval": "", "verdict": "**supported**" if not any(extra) else "**contradicted**"})
        ratios = [cells[(m, "cost")].metrics["throughput_ratio"] for m, _ in pairs
                  if _ok(cells, m, "cost") and "throughput_ratio" in cells[(m, "cost")].metrics]
        if ratios:
            slowdown = [r - 1 for r in ratios]
            mean, std, low, high = t_interval(slowdown)
            rows.append(_row("CB's inference cost is negligible (throughput CB / baseline − 1)", size, slowdown,
                             mean, std, low, high, True, cost_verdict(low, high)))
    if len(gains) >= 2:  # smallest model first: the paper expects the largest gain there
        ordered = list(gains)
        small, large = gains[ordered[0]], gains[ordered[-1]]
        diff = float(np.mean(small) - np.mean(large))
        if len(small) > 1 and len(large) > 1:
            res = stats.ttest_ind(small, large, equal_var=False)
            ci = res.confidence_interval(0.95)
            low, high = float(ci.low), float(ci.high)
        else:
            low = high = math.nan
        rows.append({"claim": f"larger clean-accuracy gain for the smaller model ({ordered[0]} vs {ordered[-1]})",
                     "model size": "both", "seeds": f"{len(small)} + {len(large)}", "per-seed values": "",
                     "mean ± std": _fmt(diff, True) + " pp (difference of mean gains)",
                     "95% interval": f"[{_fmt(low, True)}, {_fmt(high, True)}] (Welch)",
                     "verdict": verdict(low, high, +1)})
    return rows


def cost_verdict(low: float, high: float, tolerance: float = 0.05) -> str:
    """Negligible means the whole interval of the throughput change lies within ±5%."""
    if math.isnan(low):
        return "insufficient evidence (one seed: no spread)"
    if -tolerance < low and high < tolerance:
        return f"**supported** (interval within ±{tolerance:.0%})"
    if high < -tolerance:
        return f"**contradicted** (CB slower by more than {tolerance:.0%})"
    if high < 0:
        return f"inconclusive: CB measurably slower (interval below 0), not surely by more than {tolerance:.0%}"
    return f"insufficient evidence (interval reaches beyond ±{tolerance:.0%})"


def _ok(cells, model, task) -> bool:
    return (model, task) in cells and cells[(model, task)].status == "ok"


def _row(claim, size, values, mean, std, low, high, percent, judged) -> dict:
    unit = " pp" if percent else ""
    return {"claim": claim, "model size": size, "seeds": len(values),
            "per-seed values": ", ".join(_fmt(v, percent) for v in values),
            "mean ± std": _fmt(mean, percent) + ("" if math.isnan(std) else " ± " + _fmt(std, percent)[1:]) + unit,
            "95% interval": "–" if math.isnan(low) else f"[{_fmt(low, percent)}, {_fmt(high, percent)}]{unit}",
            "verdict": judged}
