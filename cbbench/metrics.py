"""Evaluation metrics for cbbench: accuracy, uncertainty, calibration, ImageNet-C mCE and
paired statistics for comparing a Context Broadcasting (CB) model with its baseline.

Everything here is plain numpy/scipy on per-sample arrays so that metrics can be recomputed
from stored predictions without torch. Conventions:

* ``correct`` arrays are per-sample booleans (0/1 integers or floats are accepted too).
* ``confidence`` is the top-1 predicted probability, in [0, 1].
* Errors are fractions in [0, 1] (not percentages); mCE-style results are reported x100.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import special, stats

from cbbench.corruptions.catalog import BENCHMARK_CORRUPTIONS, HELDOUT_CORRUPTIONS

__all__ = [
    "accuracy",
    "normalized_entropy",
    "expected_calibration_error",
    "rms_calibration_error",
    "ALEXNET_ERR",
    "ALEXNET_CLEAN_ERR",
    "corruption_error",
    "relative_corruption_error",
    "mce",
    "relative_mce",
    "mce_table",
    "paired_bootstrap_ci",
    "mcnemar_exact",
    "seed_summary",
]


# ---------------------------------------------------------------------------
# input helpers
# ---------------------------------------------------------------------------

def _as_correct(correct, name: str = "correct") -> np.ndarray:
    """1-D bool view of a per-sample correctness array; 0/1 numbers are accepted, so are bools."""
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if arr.dtype == np.bool_:
        return arr
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be boolean or contain only 0/1")
    return arr.astype(bool)


def _as_confidence(confidence, n: int) -> np.ndarray:
    """1-D float64 confidences in [0, 1] of length n (float64 so bin edges compare exactly)."""
    conf = np.asarray(confidence, dtype=np.float64)
    if conf.ndim != 1:
        raise ValueError(f"confidence must be 1-D, got shape {conf.shape}")
    if conf.size != n:
        raise ValueError(f"confidence has {conf.size} samples but correct has {n}")
    if not np.all((conf >= 0.0) & (conf <= 1.0)):  # also rejects NaN
        raise ValueError("confidence must lie in [0, 1] (and not be NaN)")
    return conf


# ---------------------------------------------------------------------------
# accuracy and uncertainty
# ---------------------------------------------------------------------------

def accuracy(correct) -> float:
    """Fraction of correct predictions.

    Raises ValueError on an empty array, because a silent NaN accuracy would propagate into
    tables unnoticed.
    """
    return float(_as_correct(correct).mean())


def normalized_entropy(p, axis: int = -1) -> np.ndarray:
    """Shannon entropy of the distributions in ``p`` along ``axis``, divided by log N.

    H(p) = -sum_i p_i log p_i with 0 log 0 = 0, N = p.shape[axis]. Dividing by log N (the
    entropy of the uniform distribution) puts the value in [0, 1] independently of the number
    of classes, so datasets with different label sets are comparable. The reduced axis is
    removed; any leading/trailing shape is kept. ``p`` is not renormalised: pass
    probabilities (e.g. a softmax). Float32 input stays float32; anything else becomes
    float64. Raises ValueError when N < 2 (log N = 0, the ratio is undefined).
    """
    p = np.asarray(p)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    n = p.shape[axis]
    if n < 2:
        raise ValueError(f"normalized entropy needs at least 2 outcomes along axis {axis}, got {n}")
    h = -special.xlogy(p, p).sum(axis=axis)  # xlogy(0, 0) == 0
    return np.asarray(h / np.log(n).astype(h.dtype))


# ---------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------

def expected_calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """Top-label expected calibration error (L1, equal-width bins, weighted by bin size).

    Why: ECE is the standard scalar for "does the confidence match the accuracy"; a CB model
    could change calibration without changing accuracy.

    Exact definition (the classic torchmetrics / Guo et al. binning): edges =
    linspace(0, 1, n_bins + 1) in float64; a confidence c goes to bin i when
    edges[i] < c <= edges[i+1]; c == 0 goes to the first bin. ECE = sum over non-empty bins of
    (n_b / N) * |mean(correct in b) - mean(confidence in b)|.

    Note: recent torchmetrics bins with ``bucketize(right=True)``, i.e. edges[i] <= c <
    edges[i+1] and c == 1.0 in a bin of its own; that gives different numbers when many
    confidences are exactly 1.0 (common in float32) or sit exactly on an edge.
    """
    corr = _as_correct(correct)
    conf = _as_confidence(confidence, corr.size)
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left": first edge >= c, so edges[i] < c <= edges[i+1] -> index i+1; c == 0 -> 0.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=corr.astype(np.float64), minlength=n_bins)
    # |acc_sum - conf_sum| / N == (n_b / N) * |acc_b - conf_b|; empty bins contribute 0.
    return float(np.abs(acc_sum - conf_sum).sum() / corr.size)


def rms_calibration_error(
    confidence, correct, bin_size: int = 100, skip_last_bin: bool = False
) -> float:
    """RMS calibration error with adaptive (equal-mass) bins, as in Hendrycks et al.

    Why: equal-mass bins avoid the empty/near-empty bins of equal-width ECE, and the squared
    gaps penalise large miscalibration; this is the "RMS calibration error" reported in the
    ImageNet-C / AugMix / PixMix line of work.

    Exact definition (Hendrycks' ``calib_err(confidence, correct, p='2', beta=bin_size)``):
    sort samples by confidence (stable sort, so ties keep input order; the original uses
    numpy's unstable default, which can order tied samples differently). Let N be the number
    of samples and k = N // bin_size. Bins are the consecutive chunks [j*bin_size,
    (j+1)*bin_size) for j < k-1, and the last bin is [(k-1)*bin_size, N), i.e. the remainder
    (N mod bin_size samples) is merged into the last full chunk, which can therefore hold up
    to 2*bin_size - 1 samples. If N < bin_size there is one bin with all samples (the
    original raises IndexError there). Result: sqrt(sum_b (n_b / N) *
    (mean(confidence in b) - mean(correct in b))**2).

    ``skip_last_bin=True`` reproduces a quirk of the original code, whose loop runs over
    ``range(len(bins) - 1)`` and so drops the last (most confident) bin while still dividing
    by the full N. By default all bins are used, so the weights sum to 1. With N = 50,000
    and bin_size = 100 the difference is one bin of 100 samples.
    """
    corr = _as_correct(correct)
    conf = _as_confidence(confidence, corr.size)
    if not isinstance(bin_size, (int, np.integer)) or bin_size < 1:
        raise ValueError(f"bin_size must be a positive integer, got {bin_size!r}")
    n = corr.size
    order = np.argsort(conf, kind="stable")
    conf = conf[order]
    corr = corr[order].astype(np.float64)
    n_bins = max(1, n // bin_size)
    starts = np.arange(n_bins) * bin_size
    counts = np.diff(np.append(starts, n)).astype(np.float64)
    gap = (np.add.reduceat(conf, starts) - np.add.reduceat(corr, starts)) / counts
    terms = counts / n * gap**2
    if skip_last_bin:
        terms = terms[:-1]
    return float(np.sqrt(terms.sum()))


# ---------------------------------------------------------------------------
# ImageNet-C mean corruption error
# ---------------------------------------------------------------------------

#: AlexNet top-1 error on ImageNet-C, severities 1..5 (Hendrycks & Dietterich, 2019), used to
#: normalise corruption errors. Includes the 4 held-out corruptions.
ALEXNET_ERR: dict[str, tuple[float, float, float, float, float]] = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.94870, 0.98720, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.58430, 0.70048, 0.82108, 0.89750, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.91870, 0.94952),
    "frost": (0.61390, 0.79734, 0.88790, 0.89942, 0.93430),
    "fog": (0.67474, 0.76050, 0.84378, 0.87260, 0.94500),
    "brightness": (0.45140, 0.48502, 0.54048, 0.62166, 0.72440),
    "contrast": (0.64548, 0.76150, 0.88874, 0.97760, 0.99270),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.54620, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
    "speckle_noise": (0.66192, 0.74440, 0.90246, 0.94548, 0.97268),
    "gaussian_blur": (0.54732, 0.70444, 0.82574, 0.89864, 0.95940),
    "spatter": (0.47196, 0.62194, 0.75052, 0.84132, 0.90182),
    "saturate": (0.59342, 0.65514, 0.51174, 0.70834, 0.82260),
}

#: AlexNet clean ImageNet top-1 error, the baseline of the relative CE.
ALEXNET_CLEAN_ERR = 0.4348

def _severity_errors(errors_by_severity, corruption: str) -> np.ndarray:
    """Validate a corruption name and its 5 per-severity error fractions."""
    if corruption not in ALEXNET_ERR:
        raise ValueError(f"unknown corruption {corruption!r}; known: {sorted(ALEXNET_ERR)}")
    err = np.asarray(errors_by_severity, dtype=np.float64)
    if err.shape != (5,):
        raise ValueError(f"{corruption}: expected 5 errors (severities 1..5), got shape {err.shape}")
    if not np.all((err >= 0.0) & (err <= 1.0)):
        raise ValueError(f"{corruption}: errors must be fractions in [0, 1], got {err.tolist()}")
    return err


def _check_fraction(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value}")
    return value


def corruption_error(errors_by_severity: Sequence[float], corruption: str) -> float:
    """CE_c = sum_s E(c, s) / sum_s E_AlexNet(c, s) (a ratio, not x100).

    Normalising by AlexNet makes easy and hard corruptions count comparably in the mean.
    """
    err = _severity_errors(errors_by_severity, corruption)
    return float(err.sum() / np.sum(ALEXNET_ERR[corruption]))


def relative_corruption_error(
    errors_by_severity: Sequence[float], clean_error: float, corruption: str
) -> float:
    """Relative CE_c = sum_s (E(c, s) - E_clean) / sum_s (E_AlexNet(c, s) - 0.4348).

    Measures the degradation caused by the corruption rather than the absolute error, so a
    model is not rewarded for robustness that is only its better clean accuracy. Can be
    negative when corrupted errors fall below the clean error.
    """
    err = _severity_errors(errors_by_severity, corruption)
    clean = _check_fraction(clean_error, "clean_error")
    ref = np.asarray(ALEXNET_ERR[corruption]) - ALEXNET_CLEAN_ERR
    return float((err - clean).sum() / ref.sum())


def _benchmark_errors(errors: Mapping[str, Sequence[float]]) -> list:
    missing = [c for c in BENCHMARK_CORRUPTIONS if c not in errors]
    if missing:
        raise ValueError(f"errors lack benchmark corruptions: {', '.join(missing)}")
    return [errors[c] for c in BENCHMARK_CORRUPTIONS]


def mce(errors: Mapping[str, Sequence[float]]) -> float:
    """Mean corruption error x100 over the 15 BENCHMARK_CORRUPTIONS (AlexNet = 100).

    Extra keys (e.g. held-out corruptions) are ignored; missing benchmark corruptions raise
    ValueError naming them, since a partial average is not comparable with published mCE.
    """
    vals = _benchmark_errors(errors)
    return 100.0 * float(np.mean([corruption_error(e, c) for c, e in zip(BENCHMARK_CORRUPTIONS, vals)]))


def relative_mce(errors: Mapping[str, Sequence[float]], clean_error: float) -> float:
    """Relative mCE x100 over the 15 BENCHMARK_CORRUPTIONS (AlexNet = 100); see mce()."""
    vals = _benchmark_errors(errors)
    return 100.0 * float(np.mean([
        relative_corruption_error(e, clean_error, c) for c, e in zip(BENCHMARK_CORRUPTIONS, vals)
    ]))


def mce_table(
    errors: Mapping[str, Sequence[float]], clean_error: float | None = None
) -> dict[str, dict[str, float]]:
    """Per-corruption breakdown for reports: {corruption: {"error", "ce", "relative_ce"}}.

    Covers every corruption in ``errors`` that has AlexNet numbers (benchmark ones first, in
    BENCHMARK_CORRUPTIONS order, then held-out ones); "error" is the mean over severities,
    "ce" and "relative_ce" are x100. "relative_ce" is present only when clean_error is given.
    Unknown corruption names raise ValueError.
    """
    unknown = [c for c in errors if c not in ALEXNET_ERR]
    if unknown:
        raise ValueError(f"unknown corruptions: {', '.join(map(str, unknown))}")
    order = [c for c in (*BENCHMARK_CORRUPTIONS, *HELDOUT_CORRUPTIONS) if c in errors]
    table = {}
    for c in order:
        row = {
            "error": float(_severity_errors(errors[c], c).mean()),
            "ce": 100.0 * corruption_error(errors[c], c),
        }
        if clean_error is not None:
            row["relative_ce"] = 100.0 * relative_corruption_error(errors[c], clean_error, c)
        table[c] = row
    return table


# ---------------------------------------------------------------------------
# paired statistics (CB model B vs baseline A on the same samples)
# ---------------------------------------------------------------------------

# Elements of one resample chunk (per gathered array): 2**22 float64 = 32 MiB.
_BOOT_CHUNK_ELEMS = 1 << 22
# Use the exact multinomial-count shortcut for the mean when the paired differences take at
# most this many distinct values (3 for bool accuracy).
_MAX_COUNT_CATEGORIES = 64


def _paired_arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"a and b must be 1-D per-sample arrays, got shapes {a.shape} and {b.shape}")
    if a.size != b.size:
        raise ValueError(f"a and b must be paired (same length), got {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("a and b are empty")
    return a.astype(np.float64), b.astype(np.float64)


def paired_bootstrap_ci(
    a,
    b,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int | None = 0,
    statistic: Callable = np.mean,
) -> tuple[float, float, float]:
    """Paired percentile-bootstrap CI for delta = statistic(b) - statistic(a).

    Why paired: A (baseline) and B (CB) are evaluated on the same samples, so resampling the
    same sample indices for both keeps their correlation and gives much tighter, correct
    intervals than two independent CIs.

    Each of the ``n_boot`` resamples draws N sample indices with replacement (the same ones
    for a and b) and computes statistic(b*) - statistic(a*); (low, high) are the
    (1-level)/2 and (1+level)/2 percentiles (numpy's default linear interpolation) of those.
    ``a``/``b`` are bool or float per-sample arrays (e.g. correctness, NLL).

    Implementation (vectorised, memory-bounded):
    * statistic is np.mean and the differences d = b - a take at most 64 distinct values
      (bool inputs: -1/0/1): the counts of resampled indices falling on each distinct value
      are drawn directly, Multinomial(N, n_k / N), and mean(d*) = sum_k v_k M_k / N. This has
      exactly the distribution of index resampling and costs O(n_boot) instead of O(N*n_boot).
    * otherwise indices are drawn in chunks of about 2**22 elements, so memory stays bounded
      (N=50,000, n_boot=2000: ~84 resamples per chunk). ``statistic`` must then be a numpy
      reduction accepting ``axis=`` (np.mean, np.median, ...).
    Results are reproducible for a given seed (and data).
    """
    a, b = _paired_arrays(a, b)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = a.size
    rng = np.random.default_rng(seed)
    is_mean = statistic is np.mean
    boot = np.empty(n_boot, dtype=np.float64)

    if is_mean:
        d = b - a
        delta = float(b.mean() - a.mean())
        values, counts = np.unique(d, return_counts=True)
        if values.size <= _MAX_COUNT_CATEGORIES:
            m = rng.multinomial(n, counts / n, size=n_boot)  # (n_boot, K)
            boot[:] = (m @ values) / n
        else:
            chunk = max(1, _BOOT_CHUNK_ELEMS // n)
            for s in range(0, n_boot, chunk):
                e = min(n_boot, s + chunk)
                idx = rng.integers(0, n, size=(e - s, n))
                boot[s:e] = d[idx].mean(axis=1)
    else:
        delta = float(statistic(b) - statistic(a))
        chunk = max(1, _BOOT_CHUNK_ELEMS // (2 * n))
        for s in range(0, n_boot, chunk):
            e = min(n_boot, s + chunk)
            idx = rng.integers(0, n, size=(e - s, n))
            boot[s:e] = statistic(b[idx], axis=1) - statistic(a[idx], axis=1)

    alpha = 1.0 - level
    low, high = np.percentile(boot, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return delta, float(low), float(high)


def mcnemar_exact(correct_a, correct_b) -> tuple[int, int, float]:
    """Exact two-sided McNemar test on the discordant pairs of two paired classifiers.

    Why: tests whether A and B differ in accuracy on the same samples using only the samples
    where exactly one of them is right; exact (binomial) so it is valid for small counts.
    n01 = #(A wrong, B right), n10 = #(A right, B wrong);
    p = min(1, 2 * BinomCDF(min(n01, n10); n01 + n10, 0.5)), and p = 1.0 when n01 + n10 = 0.
    """
    ca = _as_correct(correct_a, "correct_a")
    cb = _as_correct(correct_b, "correct_b")
    if ca.size != cb.size:
        raise ValueError(f"correct_a and correct_b must be paired (same length), got {ca.size} and {cb.size}")
    n01 = int(np.count_nonzero(~ca & cb))
    n10 = int(np.count_nonzero(ca & ~cb))
    n_disc = n01 + n10
    if n_disc == 0:
        return n01, n10, 1.0
    p = min(1.0, 2.0 * float(stats.binom.cdf(min(n01, n10), n_disc, 0.5)))
    return n01, n10, p


def seed_summary(values) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) of a metric across training seeds.

    Seed-to-seed spread is the yardstick for whether a CB-vs-baseline gap is meaningful; the
    std is NaN for a single seed (no spread can be estimated). Raises ValueError when empty.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = int(v.size)
    if n == 0:
        raise ValueError("seed_summary needs at least one value")
    std = float(v.std(ddof=1)) if n > 1 else float("nan")
    return float(v.mean()), std, n


def nonfinite_count(metrics: dict) -> int:
    """Images on which a model's logits were NaN or infinite, as counted by the tasks (``*nonfinite`` keys).

    Such images count as wrong in accuracies, so a broken model would otherwise show a plausible number;
    the report withholds its numbers and comparisons when this is above 0.
    """
    return int(max((v for k, v in metrics.items() if k.endswith("nonfinite") and isinstance(v, (int, float))),
                   default=0))


def cell_nonfinite(cell) -> int:
    """``nonfinite_count`` of a stored cell that finished ('ok'); 0 for a missing, skipped or failed one."""
    return nonfinite_count(cell.metrics) if cell is not None and cell.status == "ok" else 0
