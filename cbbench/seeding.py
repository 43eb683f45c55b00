"""The one formula for a batch's random draws: seeded by (run seed, the batch's first sample index).

PGD random starts, the epsilon sweep and the torch corruption engine all draw per batch; one
formula keeps their numbers tied to the same (seed, batch) pairs, so a cell's numbers depend on
the batch size (which the runner puts in such cells' keys) and on nothing else.
"""
from __future__ import annotations

import numpy as np


def batch_seed(seed: int, first_index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(first_index)]).generate_state(1)[0])
