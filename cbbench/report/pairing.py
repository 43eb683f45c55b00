"""Which baseline a CB model is compared with (no heavy imports: plots and tables share it)."""
from __future__ import annotations


def pair_of(spec: dict, specs: dict[str, dict]) -> str | None:
    """The baseline of a CB model: its named baseline, else the one non-CB model of the same network."""
    if not spec.get("cb"):
        return None
    if spec.get("baseline") in specs:
        return spec["baseline"]
    same = [n for n, s in specs.items() if not s.get("cb") and s.get("arch") == spec.get("arch")
            and s.get("arch_kwargs") == spec.get("arch_kwargs")]
    return same[0] if len(same) == 1 else None
