"""Tests for cbbench.metrics: exact hand-computed cases plus a few simulations."""
import math
import time
import tracemalloc

import numpy as np
import pytest

from cbbench import metrics as M
from cbbench.corruptions import catalog


# ---------------------------------------------------------------------------
# accuracy / entropy
# ---------------------------------------------------------------------------

def test_accuracy():
    assert M.accuracy(np.array([True, False, True, True])) == 0.75
    assert M.accuracy([1, 0]) == 0.5
    with pytest.raises(ValueError):
        M.accuracy(np.array([], dtype=bool))
    with pytest.raises(ValueError):
        M.accuracy([0.5, 1.0])


def test_normalized_entropy_uniform_and_onehot():
    for n in (2, 10, 1000):
        assert M.normalized_entropy(np.full(n, 1.0 / n)) == pytest.approx(1.0, abs=1e-12)
        onehot = np.zeros(n)
        onehot[n // 2] = 1.0
        assert M.normalized_entropy(onehot) == 0.0


def test_normalized_entropy_hand_computed_and_shapes():
    # H([.5, .25, .25]) = .5 ln 2 + .5 ln 4 = 1.5 ln 2; H([.5, .5, 0]) = ln 2 (0 log 0 = 0)
    p = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0]])
    out = M.normalized_entropy(p)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, [1.5 * math.log(2) / math.log(3), math.log(2) / math.log(3)], rtol=1e-12)
    # any leading shape, and a non-default axis
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(7), size=(3, 4))  # (3, 4, 7)
    out3 = M.normalized_entropy(q)
    assert out3.shape == (3, 4)
    np.testing.assert_allclose(M.normalized_entropy(np.moveaxis(q, -1, 0), axis=0), out3, rtol=1e-12)
    assert np.all((out3 >= 0) & (out3 <= 1))
    assert M.normalized_entropy(q.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError):
        M.normalized_entropy(np.ones((5, 1)))


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------

def test_ece_perfectly_calibrated_is_small():
    rng = np.random.default_rng(0)
    conf = rng.uniform(size=200_000)
    correct = rng.uniform(size=conf.size) < conf
    assert M.expected_calibration_error(conf, correct) < 0.01


def test_ece_overconfident():
    conf = np.ones(1000)
    correct = np.arange(1000) % 2 == 0
    assert M.expected_calibration_error(conf, correct) == pytest.approx(0.5, abs=1e-12)


def test_ece_hand_computed():
    # 15 bins of width 1/15: .95 and .97 share (14/15, 1]; .55 in (8/15, 9/15]; .25 in (3/15, 4/15]
    conf = [0.95, 0.97, 0.55, 0.25]
    correct = [True, False, True, False]
    expected = 0.5 * abs(0.96 - 0.5) + 0.25 * abs(0.55 - 1.0) + 0.25 * abs(0.25 - 0.0)  # = 0.405
    assert M.expected_calibration_error(conf, correct) == pytest.approx(expected, abs=1e-12)


def test_ece_bin_edges_are_right_closed():
    # n_bins=2: bins (0, .5] (with 0 included) and (.5, 1]; .5 goes to the first bin, 1.0 to the last
    conf = [0.0, 0.5, 1.0, 0.75]
    correct = [False, True, False, True]
    expected = 0.5 * abs(0.25 - 0.5) + 0.5 * abs(0.875 - 0.5)  # = 0.3125
    assert M.expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError):
        M.expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError):
        M.expected_calibration_error([0.5, 0.5], [True])


def test_rms_hand_computed():
    # sorted: .5(0) .6(1) | .7(0) .8(1) .9(1); bin_size=2 -> N//2 = 2 bins, remainder merged into the last
    conf = [0.9, 0.8, 0.7, 0.6, 0.5]
    correct = [1, 1, 0, 1, 0]
    b0 = 2 / 5 * (0.55 - 0.5) ** 2
    b1 = 3 / 5 * (0.8 - 2 / 3) ** 2
    assert M.rms_calibration_error(conf, correct, bin_size=2) == pytest.approx(math.sqrt(b0 + b1), abs=1e-12)
    # Hendrycks' original loop drops the last bin but keeps N in the weights
    assert M.rms_calibration_error(conf, correct, bin_size=2, skip_last_bin=True) == pytest.approx(
        math.sqrt(b0), abs=1e-12)
    # fewer samples than bin_size: a single bin
    assert M.rms_calibration_error([0.9, 0.7], [1, 1]) == pytest.approx(0.2, abs=1e-12)


def test_rms_matches_reference_loop():
    rng = np.random.default_rng(1)
    conf = rng.uniform(size=1234)
    correct = rng.uniform(size=conf.size) < conf ** 2
    # straightforward loop following the docstring definition
    order = np.argsort(conf, kind="stable")
    c, k = conf[order], correct[order].astype(float)
    bins = [[i * 100, (i + 1) * 100] for i in range(len(c) // 100)]
    bins[-1][1] = len(c)
    total = sum((hi - lo) / len(c) * (c[lo:hi].mean() - k[lo:hi].mean()) ** 2 for lo, hi in bins)
    assert M.rms_calibration_error(conf, correct) == pytest.approx(math.sqrt(total), rel=1e-12)


# ---------------------------------------------------------------------------
# mCE
# ---------------------------------------------------------------------------

def test_alexnet_table():
    assert len(catalog.BENCHMARK_CORRUPTIONS) == 15 and len(set(catalog.BENCHMARK_CORRUPTIONS)) == 15
    assert set(M.ALEXNET_ERR) == set(catalog.BENCHMARK_CORRUPTIONS) | set(catalog.HELDOUT_CORRUPTIONS)
    assert all(len(v) == 5 for v in M.ALEXNET_ERR.values())
    # published per-corruption averages
    for c, avg in {"gaussian_noise": 0.886428, "brightness": 0.564592, "saturate": 0.658248}.items():
        assert np.mean(M.ALEXNET_ERR[c]) == pytest.approx(avg, abs=1e-9)


def test_mce_alexnet_is_100():
    errors = {c: list(v) for c, v in M.ALEXNET_ERR.items()}
    assert M.mce(errors) == pytest.approx(100.0, abs=1e-10)
    assert M.relative_mce(errors, M.ALEXNET_CLEAN_ERR) == pytest.approx(100.0, abs=1e-10)
    for c in catalog.BENCHMARK_CORRUPTIONS:
        assert M.corruption_error(errors[c], c) == pytest.approx(1.0, abs=1e-12)


def test_mce_hand_computed():
    alex = {c: np.array(v) for c, v in M.ALEXNET_ERR.items()}
    halved = dict(alex, gaussian_noise=alex["gaussian_noise"] / 2)
    assert M.mce(halved) == pytest.approx(100 * (14 + 0.5) / 15, abs=1e-10)
    # a model at half AlexNet's error everywhere except one corruption, where it is doubled (= AlexNet)
    base = {c: v / 2 for c, v in alex.items()}
    doubled = dict(base, fog=alex["fog"])
    assert M.mce(base) == pytest.approx(50.0, abs=1e-10)
    assert M.mce(doubled) == pytest.approx(100 * (14 * 0.5 + 1) / 15, abs=1e-10)
    # held-out corruptions do not enter mCE
    assert M.mce(dict(base, speckle_noise=[1.0] * 5, saturate=[0.0] * 5)) == pytest.approx(50.0, abs=1e-10)
    # relative: E = clean + 0.5 * (E_alex - 0.4348) -> relative CE 0.5 everywhere; fog at 1.0
    clean = 0.2
    rel = {c: clean + 0.5 * (v - M.ALEXNET_CLEAN_ERR) for c, v in alex.items()}
    assert M.relative_mce(rel, clean) == pytest.approx(50.0, abs=1e-10)
    rel["fog"] = clean + (alex["fog"] - M.ALEXNET_CLEAN_ERR)
    assert M.relative_mce(rel, clean) == pytest.approx(100 * (14 * 0.5 + 1) / 15, abs=1e-10)
    assert M.relative_corruption_error(rel["fog"], clean, "fog") == pytest.approx(1.0, abs=1e-12)
    table = M.mce_table(rel, clean)
    assert list(table)[:15] == list(catalog.BENCHMARK_CORRUPTIONS)
    assert table["fog"]["relative_ce"] == pytest.approx(100.0)
    assert table["fog"]["ce"] == pytest.approx(100 * M.corruption_error(rel["fog"], "fog"))


def test_mce_missing_and_invalid():
    errors = {c: list(v) for c, v in M.ALEXNET_ERR.items()}
    del errors["fog"], errors["snow"]
    with pytest.raises(ValueError, match="snow, fog"):
        M.mce(errors)
    with pytest.raises(ValueError, match="fog"):
        M.relative_mce(errors, 0.2)
    with pytest.raises(ValueError):
        M.corruption_error([0.5] * 4, "fog")  # 4 severities
    with pytest.raises(ValueError):
        M.corruption_error([50.0] * 5, "fog")  # percentages, not fractions
    with pytest.raises(ValueError):
        M.corruption_error([0.5] * 5, "not_a_corruption")


# ---------------------------------------------------------------------------
# paired bootstrap
# ---------------------------------------------------------------------------

# joint distribution of (a correct, b correct): P(1,1), P(1,0), P(0,1), P(0,0)
_JOINT = np.array([0.70, 0.05, 0.10, 0.15])
_TRUE_DELTA = (_JOINT[0] + _JOINT[2]) - (_JOINT[0] + _JOINT[1])  # P(b) - P(a) = 0.05


def _paired_sample(rng, n):
    cell = rng.choice(4, size=n, p=_JOINT)
    return np.isin(cell, (0, 1)), np.isin(cell, (0, 2))  # a correct, b correct


def test_bootstrap_coverage():
    rng = np.random.default_rng(123)
    reps, covered = 300, 0
    for i in range(reps):
        a, b = _paired_sample(rng, 400)
        delta, lo, hi = M.paired_bootstrap_ci(a, b, n_boot=1000, seed=i)
        assert delta == pytest.approx(b.mean() - a.mean())
        covered += lo <= _TRUE_DELTA <= hi
    assert 0.91 <= covered / reps <= 0.985, covered / reps


def test_bootstrap_count_shortcut_matches_index_resampling():
    # a statistic that is not `np.mean` itself takes the generic index-resampling path
    rng = np.random.default_rng(5)
    a, b = _paired_sample(rng, 2000)
    d1, lo1, hi1 = M.paired_bootstrap_ci(a, b, n_boot=4000, seed=1)
    d2, lo2, hi2 = M.paired_bootstrap_ci(a, b, n_boot=4000, seed=1,
                                         statistic=lambda x, axis=None: np.mean(x, axis=axis))
    assert d1 == pytest.approx(d2)
    width = hi1 - lo1
    assert abs(lo1 - lo2) < 0.1 * width and abs(hi1 - hi2) < 0.1 * width


def test_bootstrap_float_inputs_match_normal_approximation():
    rng = np.random.default_rng(7)
    a = rng.normal(size=3000)
    b = a + rng.normal(0.1, 0.5, size=3000)
    delta, lo, hi = M.paired_bootstrap_ci(a, b, n_boot=2000, seed=0)
    d = b - a
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert delta == pytest.approx(d.mean())
    assert lo == pytest.approx(delta - half, abs=0.1 * half)
    assert hi == pytest.approx(delta + half, abs=0.1 * half)
    # a non-mean statistic
    dm, lom, him = M.paired_bootstrap_ci(a, b, n_boot=500, seed=0, statistic=np.median)
    assert dm == pytest.approx(np.median(b) - np.median(a)) and lom <= him


def test_bootstrap_identical_inputs_and_reproducibility():
    rng = np.random.default_rng(3)
    a = rng.uniform(size=500) < 0.7
    assert M.paired_bootstrap_ci(a, a.copy()) == (0.0, 0.0, 0.0)
    x = rng.normal(size=500)
    assert M.paired_bootstrap_ci(x, x.copy()) == (0.0, 0.0, 0.0)
    b = rng.uniform(size=500) < 0.75
    assert M.paired_bootstrap_ci(a, b, seed=11) == M.paired_bootstrap_ci(a, b, seed=11)
    assert M.paired_bootstrap_ci(a, b, seed=11) != M.paired_bootstrap_ci(a, b, seed=12)
    y = x + rng.normal(size=500)
    assert M.paired_bootstrap_ci(x, y, seed=11) == M.paired_bootstrap_ci(x, y, seed=11)


def test_bootstrap_invalid_inputs():
    with pytest.raises(ValueError):
        M.paired_bootstrap_ci([1, 0, 1], [1, 0])
    with pytest.raises(ValueError):
        M.paired_bootstrap_ci([], [])


def test_bootstrap_large_n_fast_and_memory_bounded():
    n, n_boot = 50_000, 2000
    rng = np.random.default_rng(0)
    a_bool, b_bool = _paired_sample(rng, n)
    a_f, b_f = rng.normal(size=n), rng.normal(size=n)
    # bool inputs (accuracy) take the exact multinomial-count shortcut: milliseconds, against ~0.7 s for the
    # chunked index resampling of floats on an idle core. Compared within this run, with a wide margin, so a
    # loaded machine slows both sides alike.
    t0 = time.perf_counter()
    M.paired_bootstrap_ci(a_bool, b_bool, n_boot=n_boot)
    shortcut = time.perf_counter() - t0
    t0 = time.perf_counter()
    M.paired_bootstrap_ci(a_f, b_f, n_boot=n_boot)
    assert shortcut < (time.perf_counter() - t0) / 5
    tracemalloc.start()
    try:
        M.paired_bootstrap_ci(a_f, b_f, n_boot=n_boot)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * n_boot * 8 / 4, peak  # far below one N x n_boot float64 array (800 MB)


# ---------------------------------------------------------------------------
# McNemar / seeds
# ---------------------------------------------------------------------------

def _pair(n01, n10, n11=0, n00=0):
    a = np.array([False] * n01 + [True] * n10 + [True] * n11 + [False] * n00)
    b = np.array([True] * n01 + [False] * n10 + [True] * n11 + [False] * n00)
    return a, b


def _exact_p(n01, n10):
    n, k = n01 + n10, min(n01, n10)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def test_mcnemar_hand_computed():
    a, b = _pair(10, 2, n11=30, n00=5)
    n01, n10, p = M.mcnemar_exact(a, b)
    assert (n01, n10) == (10, 2)
    assert p == pytest.approx(2 * (1 + 12 + 66) / 4096, rel=1e-12)  # 0.0385742...
    assert p == pytest.approx(0.0385742, abs=1e-7)
    # symmetric in the direction of the difference
    assert M.mcnemar_exact(b, a) == (2, 10, p)
    for n01, n10 in [(0, 5), (3, 3), (7, 1), (20, 11), (1, 0)]:
        assert M.mcnemar_exact(*_pair(n01, n10, n11=4))[2] == pytest.approx(_exact_p(n01, n10), rel=1e-12)
    assert M.mcnemar_exact(*_pair(3, 3))[2] == 1.0  # capped at 1


def test_mcnemar_no_discordant_pairs():
    a, b = _pair(0, 0, n11=5, n00=3)
    assert M.mcnemar_exact(a, b) == (0, 0, 1.0)
    with pytest.raises(ValueError):
        M.mcnemar_exact([True, False], [True])


def test_seed_summary():
    mean, std, n = M.seed_summary([0.8])
    assert (mean, n) == (0.8, 1) and math.isnan(std)
    mean, std, n = M.seed_summary([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and n == 4
    assert std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)  # ddof=1
    with pytest.raises(ValueError):
        M.seed_summary([])
