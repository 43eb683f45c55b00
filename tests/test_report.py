"""The rendered report on a fixed store (golden file), and the numbers behind its Δ columns."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cbbench.models.zoo import MODELS
from cbbench.report.leaderboard import render_suite
from cbbench.store import Store

GOLDEN = Path(__file__).parent / "golden" / "report.md"
DETAILS_GOLDEN = Path(__file__).parent / "golden" / "report_details.md"
PROVENANCE = {"versions": {"cbbench": "0.1.0", "torch": "2.x"}, "python": "3.11", "device": "cpu (x86_64)",
              "threads": 2, "date": "2026-01-01T00:00:00+00:00", "num_params": 150_000}


def put(store, run_id, pos, model, task, metrics, samples, params=None):
    spec = MODELS.get(model).to_dict()
    key = f"{model}-{task}"
    store.put(key=key, model=model, model_spec=spec, weights_digest="d", task=task, task_version=1,
              task_params=params or {}, dataset="digits", limit=None, seed=0, status="ok", metrics=metrics,
              samples=samples, provenance=PROVENANCE, wall_s=1.0)
    store.add_run_cell(run_id, pos, key, model, task)


def fixed_store(path, models=None, details=False) -> Store:
    """Two seeds per arm; CB is right on 2 more images out of 8 for seed 0, 1 more for seed 1. ``details``: also
    a corruption, two attack and a cost cell per model, which have detail tables (``Task.details``)."""
    store = Store(path)
    run_id = store.start_run("fixture", {"suite": "fixture", "seed": 0})
    rng = np.random.default_rng(0)
    pos = 0
    outcomes = {
        "demo_vit": [1, 1, 1, 1, 0, 0, 0, 0], "demo_vit_cb": [1, 1, 1, 1, 1, 1, 0, 0],
        "demo_vit_s1": [1, 1, 1, 0, 0, 0, 0, 0], "demo_vit_cb_s1": [1, 1, 1, 1, 0, 0, 0, 0],
    }
    for model, correct in outcomes.items():
        if models and model not in models:
            continue
        correct = np.array(correct, bool)
        put(store, run_id, pos, model, "clean", {"accuracy": correct.mean(), "nonfinite": 0.0},
            {"correct": correct, "confidence": rng.uniform(0.5, 1, 8)})
        pos += 1
        # CB lowers entropy by 0.100 (seed 0) and 0.101 (seed 1): identical differences would be degenerate
        entropy = np.full((8, 2, 2), 0.8 if "cb" not in model else 0.7 - 0.001 * model.endswith("_s1"), np.float32)
        put(store, run_id, pos, model, "attention_entropy",
            {"mean_entropy": float(entropy.mean()), "mean_cosine_to_uniform": 0.5, "mean_cls_attention": 0.1,
             "entropy/layer0": 0.8, "entropy/layer1": float(entropy.mean())},
            {"entropy": entropy, "correct": correct})
        pos += 1
        if details:
            pos = _detail_cells(store, run_id, pos, model, correct)
    store.finish_run(run_id)
    return store


def _detail_cells(store, run_id, pos, model, correct) -> int:
    cb = 0.1 if "cb" in model else 0.0
    corruption = {f"accuracy/{c}/{s}": a + cb for c, accs in {"gaussian_noise": (0.6, 0.4), "pixelate": (0.3, 0.5)}.items()
                  for s, a in zip((1, 2), accs)}
    corruption.update({"accuracy/gaussian_noise": 0.5 + cb, "accuracy/pixelate": 0.4 + cb, "mean_accuracy": 0.45 + cb})
    put(store, run_id, pos, model, "corruptions", corruption, {"correct": correct.astype(float) * 0.5},
        {"corruptions": ["gaussian_noise", "pixelate"], "severities": [1, 2], "engine": "imagecorruptions-1.1.2",
         "task_name": ""})
    for i, (task, params) in enumerate((("fgsm", {"attack": "fgsm", "eps": "1/255"}),
                                        ("pgd", {"attack": "pgd", "eps": "1/255", "steps": 5}))):
        put(store, run_id, pos + 1 + i, model, task, {"accuracy": 0.25 + cb + 0.01 * i, "clean_accuracy": correct.mean(),
                                                      "attack_success_rate": 0.5 - cb},
            {"correct": correct & (np.arange(8) < 2), "clean_correct": correct}, params)
    put(store, run_id, pos + 3, model, "cost",
        {"num_params": 150_000 + 64 * ("cb" in model), "images_per_second": 1000.0 - 50 * ("cb" in model),
         "partner_images_per_second": 950.0 + 50 * ("cb" in model), "throughput_ratio": 1.05 - 0.1 * ("cb" in model),
         "extra_params": 64.0 if "cb" in model else -64.0}, {}, {"repeats": 30, "warmup": 3})
    return pos + 4


def test_rendered_report_matches_the_golden_file(tmp_path):
    with fixed_store(tmp_path) as store:
        markdown, summary, paired, _ = render_suite(store, "fixture")
    if os.environ.get("CBBENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(markdown)
    assert markdown == GOLDEN.read_text(), "rendering changed: review, then CBBENCH_UPDATE_GOLDEN=1 pytest ..."


def test_task_detail_tables_match_the_golden_file(tmp_path):
    """Each task's detail section (corruption severities and the digits notes, the adversarial table and its
    note, cost, attention per layer) as rendered before the sections moved into the tasks' ``details`` hooks."""
    with fixed_store(tmp_path, models=["demo_vit", "demo_vit_cb"], details=True) as store:
        markdown = render_suite(store, "fixture").markdown
    details = markdown[markdown.index("## `corruptions`"):markdown.index("## Protocols")]
    if os.environ.get("CBBENCH_UPDATE_GOLDEN"):
        DETAILS_GOLDEN.write_text(details)
    assert details == DETAILS_GOLDEN.read_text(), "rendering changed: review, then CBBENCH_UPDATE_GOLDEN=1 pytest ..."


def test_the_report_reads_task_declarations_and_names_no_task():
    import cbbench.report
    from cbbench.tasks import TASKS
    from cbbench.tasks.base import KINDS

    assert {name: task.kind for name, task in TASKS.items() if task.kind not in KINDS} == {}
    for module in ("leaderboard", "plots"):
        source = (Path(cbbench.report.__file__).parent / f"{module}.py").read_text()
        assert "isinstance(TASKS" not in source and "getattr(task" not in source
        assert [n for n in TASKS if f'== "{n}"' in source or f'"{n}" in ' in source] == [], module


def test_delta_and_mcnemar_are_the_hand_computed_ones(tmp_path):
    with fixed_store(tmp_path) as store:
        markdown, summary, paired, _ = render_suite(store, "fixture")
    clean = [r for r in paired if r["task"] == "clean"]
    assert [r["comparison"] for r in clean] == ["demo_vit_cb − demo_vit", "demo_vit_cb_s1 − demo_vit_s1"]
    assert clean[0]["_delta"] == pytest.approx(0.25) and clean[1]["_delta"] == pytest.approx(0.125)
    # 2 discordant images, both in CB's favour: exact two-sided p = 2 * 0.5**2 = 0.5
    assert clean[0]["CB fixes / breaks"] == "2 / 0" and clean[0]["McNemar p"] == "0.5"
    entropy = [r for r in paired if r["task"] == "attention_entropy"][0]
    assert entropy["_delta"] == pytest.approx(-0.1, abs=1e-6) and entropy["McNemar p"] == "n/a"
    # Across seeds: CB arm mean (75% + 50%) / 2 = 62.5; per-seed deltas +25 and +12.5 -> mean +18.75, std 8.84,
    # 95% t-interval (1 df) 18.75 ± 12.706 * 8.84 / sqrt(2) = [-60.7, +98.2]
    assert "| 62.5 ± 17.7 (n=2)" in markdown and "+18.8 [-60.7, +98.2] (n=2)" in markdown
    assert list(summary["model"]) == ["demo_vit", "demo_vit_cb", "demo_vit_s1", "demo_vit_cb_s1"]


def test_a_store_without_the_suite_renders_nothing(tmp_path):
    with Store(tmp_path) as store:
        assert render_suite(store, "robustness") is None


def test_claim_verdicts_need_the_whole_interval_on_one_side():
    from cbbench.report.claims import CONTRADICTED, INSUFFICIENT, NO_VERDICT, SUPPORTED, cost_verdict, judge, t_interval

    mean, std, low, high = t_interval([0.02, 0.03, 0.025])
    assert mean == pytest.approx(0.025) and std == pytest.approx(0.005)
    assert (low, high) == pytest.approx((0.025 - 4.302653 * 0.005 / 3 ** 0.5, 0.025 + 4.302653 * 0.005 / 3 ** 0.5))
    assert judge(low, high, +1)[0] == SUPPORTED and judge(low, high, -1)[0] == CONTRADICTED
    assert judge(-0.01, 0.02, +1)[0] == INSUFFICIENT
    assert judge(*t_interval([0.1])[2:], +1)[0] == NO_VERDICT
    assert cost_verdict(-0.02, 0.03)[0] == SUPPORTED
    assert cost_verdict(-0.3, -0.1)[0] == CONTRADICTED
    assert cost_verdict(-0.3, 0.2)[0] == INSUFFICIENT
    assert "measurably slower" in cost_verdict(-0.107, -0.028)[1]


def test_holm_keeps_only_the_verdicts_that_survive_the_number_of_claims():
    """~17 claims at 5% each would hand a CB that does nothing a verdict in most reports (a 3-seed
    "contradicted" of the paper suite flipped under other CPU kernels): verdicts need Holm's correction."""
    from cbbench.report.claims import CONTRADICTED, INSUFFICIENT, SUPPORTED, Judged, holm, p_value, t_interval

    rng = np.random.default_rng(0)
    for n in (2, 3, 5):  # the t-test behind the interval: it excludes 0 exactly when p < 0.05
        for _ in range(200):
            v = list(rng.normal(rng.uniform(-2, 2), 1, n))
            _, _, low, high = t_interval(v)
            assert (low > 0 or high < 0) == (p_value(v) < 0.05)
    judged = [Judged(f"claim {i}", "s", "m", [], True, verdict, "the whole 95% interval lies on one side", p=p)
              for i, (p, verdict) in enumerate(((0.01, SUPPORTED), (0.02, CONTRADICTED), (0.03, SUPPORTED),
                                                 (0.5, INSUFFICIENT)))]
    judged.append(Judged("parameters", "s", "m", [64.0], False, CONTRADICTED, "counted exactly", interval=""))
    holm(judged)
    assert [j.p_holm for j in judged[:4]] == pytest.approx([0.04, 0.06, 0.06, 0.5])
    assert [j.verdict for j in judged] == [SUPPORTED, INSUFFICIENT, INSUFFICIENT, INSUFFICIENT, CONTRADICTED]
    assert "also after Holm's correction for the 4 claims" in judged[0].why
    assert "not after Holm's correction for the 4 claims judged in this run (adjusted p = 0.06)" in judged[1].why
    assert judged[4].why == "counted exactly" and np.isnan(judged[4].p_holm)  # not a tested claim


def test_one_seed_pair_gives_no_verdict_and_says_why(tmp_path):
    """A single seed pair's image-level interval must never be read as a verdict about CB."""
    with fixed_store(tmp_path, models=("demo_vit", "demo_vit_cb")) as store:
        markdown, _, _, judged = render_suite(store, "fixture")
    assert judged and all(j.verdict == "no verdict" for j in judged)
    verdict = markdown.split("## Verdict")[1].split("## ")[0]
    assert "one training seed per arm" in verdict and "**no verdict**" in verdict
    assert "**supported**" not in markdown and "**contradicted**" not in markdown


def test_verdicts_come_first_and_across_seeds(tmp_path):
    with fixed_store(tmp_path) as store:
        markdown, _, _, judged = render_suite(store, "fixture")
    assert markdown.index("## Verdict") < markdown.index("## Leaderboard across training seeds") < markdown.index(
        "## Per training seed")
    clean = next(j for j in judged if j.claim == "CB improves clean accuracy")
    # per-seed Δ +25 and +12.5 pp: mean 18.75, t(1) interval 18.75 ± 12.706 * 8.84 / sqrt(2) -> includes 0
    assert clean.values == pytest.approx([0.25, 0.125]) and clean.verdict == "insufficient evidence"
    assert clean.low == pytest.approx(0.1875 - 12.7062 * 0.0883883 / 2 ** 0.5, abs=1e-4)
    entropy = next(j for j in judged if "entropy" in j.claim)
    assert entropy.values == pytest.approx([-0.1, -0.101], abs=1e-6) and entropy.verdict == "supported"


def test_identical_per_seed_differences_give_no_verdict():
    """The finding: three seed pairs each one image apart on 16 images (+6.2 pp each) gave a zero-width
    interval, p = 0 and "supported"."""
    from cbbench.report.claims import judge_claims
    from cbbench.store import Cell

    names = [f"demo_vit{a}{s}" for a in ("", "_cb") for s in ("", "_s1", "_s2")]
    specs = {m: MODELS.get(m).to_dict() for m in names}
    cells = {(m, "clean"): Cell(m, m, specs[m], "clean", 1, {}, "digits", None, 0, "ok", None,
                                {"accuracy": 0.5 + 0.0625 * ("_cb" in m)}, {}, None, 0.0) for m in names}
    (clean,) = judge_claims(cells, specs)
    assert clean.verdict == "insufficient evidence" and "per-seed differences are identical" in clean.why


def test_the_size_comparison_compares_sizes_not_cb_variants():
    """The ablation has one size and many CB variants: "the smaller model gains more" must not compare two
    variants of the same model as if they were sizes (it did, as the ablation's last claim)."""
    from cbbench.report.claims import judge_claims
    from cbbench.store import Cell

    def judged_for(names):
        specs = {m: MODELS.get(m).to_dict() for m in names}
        cells = {(m, "clean"): Cell(m, m, specs[m], "clean", 1, {}, "digits", None, 0, "ok", None,
                                    {"accuracy": 0.5 + 0.01 * len(m) + 0.003 * ("s1" in m) + 0.002 * ("cb_s1" in m)},
                                    {}, None, 0.0)
                 for m in names}
        return [j.claim for j in judge_claims(cells, specs)]

    seeds = ("", "_s1")
    variants = [f"demo_vit{a}{s}" for a in ("", "_cb", "_cb_attn") for s in seeds]
    assert not any("smaller model" in c for c in judged_for(variants))
    sizes = [f"demo_vit{z}{a}{s}" for z in ("", "_small") for a in ("", "_cb") for s in seeds]
    assert any("smaller model (depth 4, dim 64 vs depth 6, dim 96)" in c for c in judged_for(sizes))


def test_a_claims_metric_is_worded_from_the_protocol_the_cells_were_run_with():
    """A suite file can run PGD with 20 steps at 2/255: the verdict must not say PGD-5."""
    from cbbench.report.claims import judge_claims
    from cbbench.store import Cell
    from cbbench.tasks import TASKS

    def cells_for(params):
        specs = {m: MODELS.get(m).to_dict() for m in ("demo_vit", "demo_vit_cb")}
        return specs, {(m, "pgd"): Cell(m, m, specs[m], "pgd", 1, params, "digits", None, 0, "ok", None,
                                        {"accuracy": 0.5 + 0.1 * ("cb" in m)}, {}, None, 0.0)
                       for m in specs}

    specs, cells = cells_for({**TASKS.get("pgd").params(), "batch_size": 128})  # the runner adds batch_size
    assert judge_claims(cells, specs)[0].label == "PGD-5 robust accuracy"
    specs, cells = cells_for({**TASKS.get("pgd").params(), "eps": "2/255", "steps": 20})
    assert judge_claims(cells, specs)[0].label == "PGD-20 (ε 2/255) robust accuracy"


def test_a_model_with_non_finite_outputs_anywhere_takes_part_in_no_comparison():
    """The finding: CB models whose head was NaN (clean withheld) still earned "CB lowers attention entropy:
    supported", since their attention maps were finite. A broken model is broken in every task."""
    from cbbench.report.claims import judge_claims
    from cbbench.report.leaderboard import paired_rows
    from cbbench.store import Cell, pack

    names = [f"demo_vit{a}{s}" for a in ("", "_cb") for s in ("", "_s1", "_s2")]
    specs = {m: MODELS.get(m).to_dict() for m in names}
    rng = np.random.default_rng(0)
    cells = {}
    for m in names:
        cb = "_cb" in m
        entropy = rng.uniform(0.5, 0.6, 40) - 0.1 * cb  # a clear, consistent entropy drop
        clean = {"accuracy": 0.1, "nonfinite": 40.0} if m == "demo_vit_cb_s2" else {"accuracy": 0.9}
        cells[(m, "clean")] = Cell(m, m, specs[m], "clean", 1, {}, "digits", None, 0, "ok", None, clean, {}, None,
                                   0.0, pack({"correct": np.ones(40, bool)}))
        cells[(m, "attention_entropy")] = Cell(m, m, specs[m], "attention_entropy", 1, {}, "digits", None, 0, "ok",
                                               None, {"mean_entropy": float(entropy.mean())}, {}, None, 0.0,
                                               pack({"entropy": entropy}))
    judged = {j.claim: j for j in judge_claims(cells, specs)}
    entropy_claim = next(j for c, j in judged.items() if "entropy" in c)
    assert entropy_claim.verdict == "no verdict"
    assert "non-finite outputs from demo_vit_cb_s2 (in clean)" in entropy_claim.why
    rows = paired_rows(cells, names, specs, ["clean", "attention_entropy"])
    assert {r["comparison"] for r in rows} == {"demo_vit_cb − demo_vit", "demo_vit_cb_s1 − demo_vit_s1"}


def test_a_cb_model_paired_with_another_network_is_not_judged_as_cb():
    """CB on a 6-block model against a 4-block baseline measures CB plus the size: no CB claim."""
    from cbbench.report.claims import judge_claims
    from cbbench.store import Cell

    specs = {"demo_vit": MODELS.get("demo_vit").to_dict(),
             "big_cb": {**MODELS.get("demo_vit_small_cb").to_dict(), "name": "big_cb", "baseline": "demo_vit"}}
    cells = {(m, "clean"): Cell(m, m, specs[m], "clean", 1, {}, "digits", None, 0, "ok", None,
                                {"accuracy": 0.5 + 0.1 * (m == "big_cb")}, {}, None, 0.0) for m in specs}
    assert judge_claims(cells, specs) == []


def test_an_arm_is_only_compared_across_seeds_with_one_other_arm():
    """The findings: an arm whose seeds named a baseline and a CB model as baselines (cbok − base, cbcb − cbok)
    and a cycle (a − b, b − a: 0 by construction) were averaged as "Δ − baseline across seeds"."""
    from cbbench.report.arms import arm_baselines, seed_groups
    from cbbench.report.claims import judge_claims
    from cbbench.store import Cell

    cb = MODELS.get("demo_vit_cb").to_dict()
    specs = {"base": {**MODELS.get("demo_vit").to_dict(), "name": "base"},
             "cbok": {**cb, "name": "cbok", "baseline": "base"},
             "cbcb": {**cb, "name": "cbcb", "seed": 3, "baseline": "cbok"}}
    groups = seed_groups(list(specs), specs)
    assert ["cbok", "cbcb"] in groups.values() and arm_baselines(["cbok", "cbcb"], specs, groups) is None
    cycle = {"a": {**specs["base"], "name": "a", "baseline": "b"}, "b": {**specs["base"], "name": "b", "seed": 1,
                                                                          "baseline": "a"}}
    assert arm_baselines(["a", "b"], cycle, seed_groups(list(cycle), cycle)) is None
    cells = {(m, "clean"): Cell(m, m, specs[m], "clean", 1, {}, "digits", None, 0, "ok", None,
                                {"accuracy": 0.5 + 0.1 * i}, {}, None, 0.0) for i, m in enumerate(specs)}
    assert judge_claims(cells, specs) == []


def test_untrained_or_differently_trained_twins_make_no_cb_claim():
    from cbbench.report.pairing import is_cb_pair

    base, cb = MODELS.get("demo_vit").to_dict(), MODELS.get("demo_vit_cb").to_dict()
    assert is_cb_pair(cb, base)
    assert not is_cb_pair({**cb, "weights": "random"}, {**base, "weights": "random"})  # smoke-test networks
    assert not is_cb_pair(cb, {**base, "weights": "random", "recipe": None})  # trained against untrained
    assert not is_cb_pair({**cb, "seed": 1}, base)  # another initialization is more than CB
