"""Epsilons in pixel units: parsed and checked without importing foolbox (task registration stays fast)."""
from __future__ import annotations

import math


def parse_pixel_value(value, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number in [0, 1] pixel units, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/")
                parsed = float(num) / float(den)
            else:
                parsed = float(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"cannot parse {name}={value!r}: expected a number in [0, 1] pixel "
                "units or a fraction such as '1/255' or '4/255'"
            ) from None
    else:
        try:
            parsed = float(value)  # Python/NumPy numbers, 0-d tensors
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must be a number in [0, 1] pixel units or a string such as "
                f"'1/255', got {value!r}"
            ) from None
    if math.isnan(parsed) or math.isinf(parsed):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if parsed < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if parsed > 1:
        raise ValueError(
            f"{name}={value!r} is larger than 1, but images are in [0, 1] and {name} is "
            f"in pixel units: did you mean {parsed:g}/255?"
        )
    return parsed


def validate_epsilon(eps) -> float:
    """Return ``eps`` as a float in [0, 1] pixel units.

    Accepts numbers and strings such as ``"1/255"``, ``"4/255"`` or ``"0.0157"``.
    Raises ValueError for negative, NaN/infinite, unparseable or > 1 values
    (the last usually means 0..255 units: 2.0 suggests ``2/255``).
    """
    return parse_pixel_value(eps, "eps")


def validate_steps(steps) -> int:
    """An attack's number of steps as a task states it: a whole number >= 1 (not a bool)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return steps


def check_pgd_reach(eps, steps, step_size) -> None:
    """Refuse a PGD budget whose steps cannot carry an image to the edge of its ε-ball (steps x step size < ε).

    Such an attack is weaker than its label: the report would print "PGD ε=8/255" for an attack that moves
    at most 2.5/255 (what overriding ``eps`` in a suite file without ``step_size`` used to give).
    """
    e, steps = validate_epsilon(eps), validate_steps(steps)
    if step_size is None:
        raise ValueError(f"PGD needs a step_size, e.g. {2.5 * e * 255 / steps:.3g}/255 for eps={eps} in "
                         f"{steps} steps (2.5 x eps / steps, Madry et al.)")
    s = parse_pixel_value(step_size, "step_size")
    if s <= 0 or steps * s < e * (1 - 1e-9):
        raise ValueError(
            f"PGD with eps={eps} cannot reach the edge of its ε-ball: {steps} steps of {step_size} move an image at "
            f"most {steps * s * 255:.3g}/255, a weaker attack than its label. Set step_size to at least eps / steps "
            f"({e * 255 / steps:.3g}/255; 2.5 x eps / steps = {2.5 * e * 255 / steps:.3g}/255 is usual) or raise steps")
