"""The arms of an experiment: models that differ only in their training seed, and which arm each is compared with.

The leaderboard's table across seeds and the claims' verdicts both read the arms from here, so a verdict is
judged from exactly the seed pairs the table shows (no heavy imports: the plots share it too).
"""
from __future__ import annotations

import json

from cbbench.report.pairing import pair_of

# Fields that tell models of one arm apart without changing the network or its training: the name, the pairing,
# the seed itself, and the file each seed's weights were saved to.
PER_SEED = ("name", "description", "baseline", "seed", "checkpoint", "sha256")


def seed_group(spec: dict) -> str:
    """Models that differ only in their training seed form one group (one arm of an experiment). Whether a model
    is compared with a baseline is part of its arm: two modules of one class given to cbbench.evaluate (a change
    and its baseline: their weights, not their specs, differ) are two arms, not two seeds of one."""
    arm = {k: v for k, v in spec.items() if k not in PER_SEED}
    return json.dumps({**arm, "compared": spec.get("baseline") is not None}, sort_keys=True, default=list)


def seed_groups(models: list[str], specs: dict) -> dict[str, list[str]]:
    """Seed groups; members that share a seed are not seeds of one arm, so such a group is split up."""
    groups: dict[str, list[str]] = {}
    for m in models:
        groups.setdefault(seed_group(specs[m]), []).append(m)
    out: dict[str, list[str]] = {}
    for key, members in groups.items():
        seeds = [specs[m].get("seed") for m in members]
        if len(set(seeds)) == len(seeds):
            out[key] = members
        else:
            out.update({f"{key}#{m}": [m] for m in members})
    return out


def arm_baselines(members: list[str], specs: dict, groups: dict[str, list[str]]) -> list[str] | None:
    """The baseline of each member when they form one compared arm: every member has one, the baselines are
    one other arm, each seed paired with its own. None otherwise (a chain or a cycle of baselines, or an arm
    compared with models of several arms, has no Δ across seeds)."""
    bases = [pair_of(specs[m], specs) for m in members]
    if not all(bases) or set(bases) & set(members) or len(set(bases)) != len(bases):
        return None
    if not any(set(bases) == set(g) for g in groups.values()):
        return None
    return bases
