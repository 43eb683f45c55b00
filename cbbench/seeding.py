"""The one formula for a batch's random draws: seeded by (run seed, the batch's first sample index).

PGD random starts, the epsilon sweep, AutoAttack and the torch corruption engine all draw per
batch; one formula keeps their numbers tied to the same (seed, batch) pairs, so a cell's numbers
depend on the batch size (which the runner puts in such cells' keys) and on nothing else.
``run_batches`` computes it once per batch and hands it to perturbations (``tasks.base.Batch``);
``corruptions.apply.corrupt_batch`` computes it from the same inputs for callers outside the
batch loop (``cbbench datasets make-c``).
"""
from __future__ import annotations

import numpy as np


def batch_seed(seed: int, first_index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(first_index)]).generate_state(1)[0])
