"""A model with NaN or infinite outputs is flagged, never compared: no confident wrong answer."""
from __future__ import annotations

import json

import torch

from cbbench.cli import main
from cbbench.models.build import build_network
from cbbench.models.zoo import MODELS
from cbbench.train import checkpoint_path


def test_a_nan_model_is_flagged_and_its_comparisons_withheld(tmp_path, capsys):
    root = tmp_path / "ckpt"
    root.mkdir()
    for name in ("demo_vit", "demo_vit_cb"):
        spec = MODELS.get(name)
        state = build_network(spec).state_dict()
        if name == "demo_vit":  # the finding: a checkpoint filled with NaN gave "+100.0 [+100.0, +100.0]"
            state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
        torch.save(state, checkpoint_path(spec, root))
    code = main(["run", "--models", "demo_vit", "demo_vit_cb", "--tasks", "clean", "fgsm", "--limit", "32",
                 "--checkpoints", str(root), "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1
    assert "clean / demo_vit: NaN or infinite logits on 32 image(s)" in err
    markdown = (tmp_path / "r" / "robustness.md").read_text()
    assert "non-finite on 32 img" in markdown and "withheld: non-finite outputs" in markdown
    assert "+100.0" not in markdown and "McNemar" not in markdown.split("## Verdict")[0]
    report = json.loads((tmp_path / "r" / "robustness.json").read_text(), parse_constant=_reject)  # strict JSON
    assert report["paired"] == []
    assert all(v["verdict"] == "no verdict" for v in report["verdicts"])


def _reject(name):
    raise ValueError(f"bare {name} in the JSON report")
