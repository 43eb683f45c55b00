"""The paper's claims judged across training seeds: one set of verdict rules for every suite.

A claim is judged from the per-seed paired differences (CB seed k minus baseline
seed k, same recipe and test images): their mean and a 95% Student-t interval
across seeds. "supported" / "contradicted" need the whole interval on one side
of 0 and the same after Holm's correction over every claim the run judges;
otherwise the evidence is insufficient. A report judges ~17 claims: at 5% each,
a CB that does nothing would still earn a verdict in more than half of such
reports (a 3-seed "contradicted" of the paper suite did not survive training on
other CPU kernels). One seed pair gives no verdict: an interval over images says
nothing about training randomness, which moves a single pair's difference by
more than CB does (the same recipe on another CPU flipped its sign).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from cbbench.report.arms import arm_baselines, seed_groups
from cbbench.report.broken import broken_models
from cbbench.report.pairing import is_cb_pair

SUPPORTED, CONTRADICTED, INSUFFICIENT, NO_VERDICT = "supported", "contradicted", "insufficient evidence", "no verdict"
#: The family-wise error rate the verdicts of one run keep (Holm's step-down correction).
ALPHA = 0.05


@dataclass(frozen=True)
class Claim:
    text: str
    tasks: tuple[str, ...]  # the first of these in a run is judged (engines of one measurement)
    key: str
    label: str
    percent: bool
    sign: int  # +1: CB should raise the metric; -1: lower it


CLAIMS = [
    Claim("CB improves clean accuracy", ("clean",), "accuracy", "clean top-1", True, +1),
    Claim("CB improves corruption robustness", ("corruptions", "corruptions_torch"), "mean_accuracy",
          "mean accuracy over the 15 corruptions x 5 severities", True, +1),
    Claim("CB improves adversarial robustness (FGSM)", ("fgsm",), "accuracy", "FGSM robust accuracy", True, +1),
    Claim("CB improves adversarial robustness (PGD)", ("pgd",), "accuracy", "PGD-5 robust accuracy", True, +1),
    Claim("CB improves adversarial robustness (strong PGD)", ("pgd_strong",), "accuracy",
          "PGD-10 (4/255) robust accuracy", True, +1),
    Claim("CB improves generalization (linear probe)", ("linear_probe",), "accuracy", "linear-probe top-1", True, +1),
    Claim("CB improves generalization (fine-tuning)", ("finetune",), "accuracy", "fine-tune top-1", True, +1),
    Claim("CB lowers attention entropy (sparser maps)", ("attention_entropy",), "mean_entropy",
          "mean attention entropy H/log N", False, -1),
]


@dataclass
class Judged:
    """One claim for one model size: the per-seed values behind it and the verdict."""
    claim: str
    size: str
    label: str
    values: list[float]
    percent: bool
    verdict: str
    why: str
    interval: str = "t"  # how low/high were made: "t" across seeds, "welch", or "" (none)
    mean: float = math.nan
    std: float = math.nan
    low: float = math.nan
    high: float = math.nan
    p: float = math.nan  # two-sided test of "no difference" (nan: not a tested claim)
    p_holm: float = math.nan  # p after Holm's correction over the run's tested claims
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and not math.isfinite(v) else v
        return {"claim": self.claim, "model_size": self.size, "metric": self.label, "percent": self.percent,
                "seeds": len(self.values),
                "per_seed": [clean(v) for v in self.values], "mean": clean(self.mean), "std": clean(self.std),
                "low": clean(self.low), "high": clean(self.high), "p": clean(self.p), "p_holm": clean(self.p_holm),
                "verdict": self.verdict, "why": self.why}


def t_interval(values: list[float]) -> tuple[float, float, float, float]:
    """(mean, std, low, high) with a 95% Student-t interval across seeds (nan bounds for one seed)."""
    v = np.asarray(values, float)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(v) - 1)) * std / math.sqrt(len(v))
    return mean, std, mean - half, mean + half


def identical(values: list[float]) -> bool:
    """Two or more per-seed differences equal up to rounding: a t-interval of zero width, one point, not a spread."""
    v = np.asarray(values, float)
    return len(v) > 1 and v.std(ddof=1) <= 1e-12 * max(1.0, abs(v.mean()))


def p_value(values: list[float]) -> float:
    """Two-sided one-sample t-test of the per-seed differences against 0, the test behind ``t_interval``
    (its 95% interval excludes 0 exactly when p < 0.05); nan for one seed."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return math.nan
    if identical(v):
        return 0.0 if v.mean() != 0 else 1.0
    return float(stats.ttest_1samp(v, 0.0).pvalue)


def holm(judged: list[Judged]) -> None:
    """Holm's step-down correction over the claims with a test: each gets ``p_holm``, and a verdict whose
    interval excludes 0 only by the luck of many comparisons becomes "insufficient evidence", so a run's
    verdicts are all right with probability >= 1 - ALPHA when CB changes nothing they test."""
    tested = sorted((j for j in judged if not math.isnan(j.p)), key=lambda j: j.p)
    running = 0.0
    for rank, j in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * j.p))
        j.p_holm = running
    for j in tested:
        if j.verdict not in (SUPPORTED, CONTRADICTED):
            continue
        if j.p_holm >= ALPHA:
            j.verdict = INSUFFICIENT
            j.why = (f"the 95% interval excludes 0, but not after Holm's correction for the {len(tested)} claims "
                     f"judged in this run (adjusted p = {j.p_holm:.2g})")
        else:
            j.why += f", also after Holm's correction for the {len(tested)} claims judged in this run " \
                     f"(adjusted p = {j.p_holm:.2g})"


def judge(low: float, high: float, sign: int) -> tuple[str, str]:
    """(verdict, why) from an interval of CB − baseline and the direction the claim expects."""
    if math.isnan(low):
        return NO_VERDICT, ("one training seed pair: an interval over test images does not cover training "
                            "randomness, so it cannot support or contradict a claim about CB")
    if (low > 0 and sign > 0) or (high < 0 and sign < 0):
        return SUPPORTED, "the whole 95% interval lies on the side the paper claims"
    if (low > 0 and sign < 0) or (high < 0 and sign > 0):
        return CONTRADICTED, "the whole 95% interval lies on the side opposite to the paper's claim"
    return INSUFFICIENT, "the 95% interval includes 0"


def cost_verdict(low: float, high: float, tolerance: float = 0.05) -> tuple[str, str]:
    """Negligible means the whole interval of the throughput change lies within ±5%."""
    if math.isnan(low):
        return NO_VERDICT, "one seed pair: no spread of the timing"
    if -tolerance < low and high < tolerance:
        return SUPPORTED, f"the interval lies within ±{tolerance:.0%}"
    if high < -tolerance:
        return CONTRADICTED, f"CB is slower by more than {tolerance:.0%}"
    if high < 0:
        return INSUFFICIENT, f"CB is measurably slower (interval below 0), not surely by more than {tolerance:.0%}"
    return INSUFFICIENT, f"the interval reaches beyond ±{tolerance:.0%}"


# Spec fields that make one CB variant differ from another (only non-default ones are in a stored spec).
CB_VARIANT_FIELDS = ("cb_layers", "cb_position", "cb_alpha", "cb_scaled")


def size_label(spec: dict) -> str:
    """The model size, and the CB variant when it is not the paper's (e.g. "depth 4, dim 64, CB(position=attn)")."""
    kw = spec.get("arch_kwargs", {})
    size = f"depth {kw.get('depth', '?')}, dim {kw.get('embed_dim', '?')}" if kw else spec["arch"]
    variant = {k.removeprefix("cb_"): spec[k] for k in CB_VARIANT_FIELDS if spec.get(k) is not None}
    if not variant:
        return size
    shown = ", ".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else v}"
                      for k, v in variant.items())
    return f"{size}, CB({shown})"


def _label(claim: Claim, cell) -> str:
    """The claim's metric as this run measured it: its fixed wording for the registered protocol, else one
    from the cell's stored parameters (a suite file may set other steps, budgets or corruptions)."""
    from cbbench.tasks import TASKS

    registered = TASKS.get(cell.task).params() if cell.task in TASKS else {}
    params = {k: v for k, v in cell.task_params.items() if k in registered}  # not the runner's batch_size, partner
    if not registered or json.dumps(params, sort_keys=True, default=list) == json.dumps(
            registered, sort_keys=True, default=list):
        return claim.label
    if params.get("attack") in ("pgd", "fgsm"):
        name = "FGSM" if params["attack"] == "fgsm" else f"PGD-{params.get('steps')}"
        return f"{name} (ε {params.get('eps')}) robust accuracy"
    if "corruptions" in params and "severities" in params:
        return (f"mean accuracy over {len(params['corruptions'])} corruption(s) x {len(params['severities'])} "
                "severit(ies)")
    return f"{claim.label} (parameters {params})"


def _ok(cells, model, task) -> bool:
    return (model, task) in cells and cells[(model, task)].status == "ok"


def _finite(values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def judge_claims(cells: dict, specs: dict[str, dict]) -> list[Judged]:
    """Every claim this run measured, per model size, judged from its per-seed paired differences."""
    # The CB arms, each seed with its baseline's same seed: the pairs the table across seeds shows. The claims are
    # CB's: an arm that differs from its baseline by more than CB (another change, network, recipe, untrained
    # weights) only gets paired differences.
    groups = seed_groups(list(specs), specs)
    arms = []
    for members in groups.values():
        bases = arm_baselines(members, specs, groups)
        if bases is not None and all(is_cb_pair(specs[m], specs[b]) for m, b in zip(members, bases)):
            arms.append(list(zip(members, bases)))
    broken_in = broken_models(cells)
    tasks = {t for _, t in cells}
    judged, gains = [], {}
    for pairs in arms:
        size = size_label(specs[pairs[0][0]])
        for claim in CLAIMS:
            task = next((t for t in claim.tasks if t in tasks), None)
            if task is None:
                continue
            measured = [(m, b) for m, b in pairs if _ok(cells, m, task) and _ok(cells, b, task)]
            if not measured:
                continue
            deltas = [cells[(m, task)].metrics.get(claim.key, math.nan) - cells[(b, task)].metrics.get(claim.key, math.nan)
                      for m, b in measured]
            # a model with non-finite outputs in any task is broken: no claim uses it
            broken = [x for pair in measured for x in pair if x in broken_in]
            label = _label(claim, cells[measured[0][0], task])
            if broken or not _finite(deltas):
                judged.append(Judged(claim.text, size, label, [], claim.percent, NO_VERDICT,
                                     "non-finite outputs from " + ", ".join(f"{x} (in {broken_in[x]})" for x in broken)
                                     if broken else "a model's metric is not a finite number"))
                continue
            mean, std, low, high = t_interval(deltas)
            if task == "clean" and not any(specs[pairs[0][0]].get(f) is not None for f in CB_VARIANT_FIELDS):
                gains[size] = deltas  # model sizes with the paper's CB; a variant of one size is not a size
            if identical(deltas):  # a zero-width interval and p = 0: degenerate, no evidence about training
                judged.append(Judged(claim.text, size, label, deltas, claim.percent, INSUFFICIENT,
                                     f"the {len(deltas)} per-seed differences are identical: an interval of zero "
                                     "width says the metric is too coarse here (few test images), not that "
                                     "training randomness is absent", mean=mean, std=std, low=low, high=high))
                continue
            judged.append(Judged(claim.text, size, label, deltas, claim.percent, *judge(low, high, claim.sign),
                                 mean=mean, std=std, low=low, high=high, p=p_value(deltas)))
        judged += _cost_claims(cells, pairs, size)
    if len(gains) >= 2:
        judged.append(_smaller_gains_more(gains))
    holm(judged)
    return judged


def _cost_claims(cells, pairs, size) -> list[Judged]:
    out = []
    extra = [cells[(m, "cost")].metrics.get("extra_params") for m, _ in pairs if _ok(cells, m, "cost")]
    if extra and None not in extra:
        verdict = CONTRADICTED if any(extra) else SUPPORTED
        out.append(Judged("CB adds no parameters", size, "extra parameters", extra, False, verdict,
                          "counted exactly", interval=""))
    ratios = [cells[(m, "cost")].metrics["throughput_ratio"] for m, _ in pairs
              if _ok(cells, m, "cost") and "throughput_ratio" in cells[(m, "cost")].metrics]
    if ratios:
        slowdown = [r - 1 for r in ratios]
        mean, std, low, high = t_interval(slowdown)
        out.append(Judged("CB's inference cost is negligible", size, "throughput CB / baseline − 1", slowdown, True,
                          *cost_verdict(low, high), mean=mean, std=std, low=low, high=high))
    return out


def _smaller_gains_more(gains: dict[str, list[float]]) -> Judged:
    """The paper expects the largest clean-accuracy gain for the smallest model (sizes in suite order)."""
    ordered = list(gains)
    small, large = gains[ordered[0]], gains[ordered[-1]]
    diff = float(np.mean(small) - np.mean(large))
    low = high = p = math.nan
    if len(small) > 1 and len(large) > 1:
        test = stats.ttest_ind(small, large, equal_var=False)
        ci = test.confidence_interval(0.95)
        low, high, p = float(ci.low), float(ci.high), float(test.pvalue)
    return Judged(f"CB's clean-accuracy gain is larger for the smaller model ({ordered[0]} vs {ordered[-1]})",
                  "both", "difference of mean gains", small + large, True, *judge(low, high, +1),
                  interval="welch", mean=diff, low=low, high=high, p=p, extra={"seeds": f"{len(small)} + {len(large)}"})


def fmt(value: float, percent: bool) -> str:
    scale, digits = (100, 1) if percent else (1, 3)
    return "–" if value is None or math.isnan(value) else f"{scale * value:+.{digits}f}"


def sentence(j: Judged) -> str:
    """One quotable sentence: the verdict, the numbers behind it and why."""
    unit = " pp" if j.percent else ""
    head = f"- **{j.claim}** ({j.size}): **{j.verdict}**."
    if not j.values:
        return f"{head} {j.why}; the numbers are withheld."
    if j.interval == "":
        return f"{head} {j.label}: {', '.join(f'{v:+,.0f}' for v in j.values)} ({j.why})."
    if j.interval == "welch":
        return (f"{head} Difference of the mean clean-accuracy gains {fmt(j.mean, True)} pp, 95% Welch interval "
                f"[{fmt(j.low, True)}, {fmt(j.high, True)}] pp ({j.extra.get('seeds')} seed pairs): {j.why}.")
    per_seed = ", ".join(fmt(v, j.percent) for v in j.values)
    if j.verdict == NO_VERDICT:
        return f"{head} CB − baseline {j.label}: {per_seed}{unit}; {j.why}."
    return (f"{head} CB − baseline {j.label} over {len(j.values)} training-seed pairs: mean {fmt(j.mean, j.percent)}"
            f"{unit}, 95% t-interval [{fmt(j.low, j.percent)}, {fmt(j.high, j.percent)}]{unit} (per seed: "
            f"{per_seed}); {j.why}.")


def table_rows(judged: list[Judged]) -> list[dict]:
    """The same verdicts as a table, for the report's detail section."""
    rows = []
    for j in judged:
        unit = " pp" if j.percent else ""
        if j.interval == "":
            values, spread, interval = ", ".join(f"{v:+,.0f}" for v in j.values), "", ""
        else:
            values = ", ".join(fmt(v, j.percent) for v in j.values) if j.interval == "t" else ""
            spread = fmt(j.mean, j.percent) + ("" if math.isnan(j.std) else " ± " + fmt(j.std, j.percent)[1:]) + unit
            interval = "–" if math.isnan(j.low) else f"[{fmt(j.low, j.percent)}, {fmt(j.high, j.percent)}]{unit}"
        rows.append({"claim": j.claim, "model size": j.size, "seeds": j.extra.get("seeds", len(j.values)),
                     "per-seed values": values, "mean ± std": spread, "95% interval": interval,
                     "p (Holm)": "" if math.isnan(j.p) else f"{j.p:.2g} ({j.p_holm:.2g})",
                     "verdict": f"**{j.verdict}**" if j.verdict in (SUPPORTED, CONTRADICTED) else j.verdict})
    return rows
