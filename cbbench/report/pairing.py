"""Which baseline a model is compared with (no heavy imports: plots and tables share it)."""
from __future__ import annotations


def pair_of(spec: dict, specs: dict[str, dict]) -> str | None:
    """The baseline a model is compared with: its named baseline (a CB twin's, or any other change's, such as
    another architecture), else, for a CB model, the one non-CB model of the same network. Only CB pairs have
    their claims judged (report/claims.py); every pair gets paired differences."""
    if spec.get("baseline") in specs and spec["baseline"] != spec.get("name"):
        return spec["baseline"]
    if not spec.get("cb"):
        return None
    same = [n for n, s in specs.items() if not s.get("cb") and s.get("arch") == spec.get("arch")
            and s.get("arch_kwargs") == spec.get("arch_kwargs")]
    return same[0] if len(same) == 1 else None


# What a CB twin shares with its baseline: the network, its training (recipe, data, seed) and its input.
SAME_IN_A_CB_PAIR = ("arch", "arch_kwargs", "recipe", "dataset", "seed", "mean", "std")


def is_cb_pair(spec: dict, base: dict) -> bool:
    """Whether a model and the baseline it is compared with differ by CB alone (the same network, training and
    seed, the baseline without CB; neither an untrained smoke-test network): only then is their difference a CB
    effect the claims may judge."""
    return (bool(spec.get("cb")) and not base.get("cb") and "random" not in (spec.get("weights"), base.get("weights"))
            and all(spec.get(k) == base.get(k) for k in SAME_IN_A_CB_PAIR))
