"""The digits report explains, from its own numbers, pixelate's non-monotone severities and look-alike attack columns."""
from __future__ import annotations

import numpy as np

from cbbench.models.zoo import MODELS
from cbbench.report.leaderboard import render_suite
from cbbench.store import Store

PIXELATE = {1: 0.528, 2: 0.975, 3: 0.183, 4: 0.9, 5: 0.3}


def store_with(path, dataset: str) -> Store:
    store = Store(path)
    run_id = store.start_run("notes", {"suite": "notes", "seed": 0})
    pos = 0
    for model, shift in (("demo_vit", 0.0), ("demo_vit_cb", 0.01)):
        metrics = {f"accuracy/pixelate/{s}": a - shift for s, a in PIXELATE.items()}
        metrics.update({f"accuracy/fog/{s}": 0.9 - 0.1 * s for s in PIXELATE})
        metrics.update({"accuracy/pixelate": float(np.mean(list(PIXELATE.values()))), "accuracy/fog": 0.6,
                        "mean_accuracy": 0.6})
        attacks = {"corruptions_torch": ({"corruptions": ["pixelate", "fog"], "severities": [1, 2, 3, 4, 5],
                                          "engine": "cbbench-torch"}, metrics),
                   "fgsm": ({"attack": "fgsm", "eps": "1/255"}, {"accuracy": 0.95 - shift, "clean_accuracy": 0.98,
                                                                  "attack_success_rate": 0.03}),
                   "pgd": ({"attack": "pgd", "eps": "1/255"}, {"accuracy": 0.947 - shift, "clean_accuracy": 0.98,
                                                                "attack_success_rate": 0.034})}
        for task, (params, m) in attacks.items():
            key = f"{model}-{task}"
            store.put(key=key, model=model, model_spec=MODELS.get(model).to_dict(), weights_digest="d", task=task,
                      task_version=1, task_params=params, dataset=dataset, limit=None, seed=0, status="ok",
                      metrics=m, samples={"correct": np.ones(8, bool)}, provenance={}, wall_s=1.0)
            store.add_run_cell(run_id, pos, key, model, task)
            pos += 1
    store.finish_run(run_id)
    return store


def test_digits_notes_quote_the_data(tmp_path):
    with store_with(tmp_path, "digits") as store:
        markdown = render_suite(store, "notes").markdown
    pixelate = next(line for line in markdown.splitlines() if line.startswith("pixelate is not monotone"))
    assert "demo_vit: 52.8, 97.5, 18.3, 90.0, 30.0 % at severities 1, 2, 3, 4, 5" in pixelate
    assert "grid of 19, 16, 12, 9, 8 pixels" in pixelate
    attacks = next(line for line in markdown.splitlines() if line.startswith("At ε = 1/255"))
    assert "fgsm, pgd differ by at most 0.3 pp per model (identical for 0 of 2)" in attacks
    assert markdown.index(attacks) > markdown.index("## Adversarial: accuracy (%)")


def test_no_digits_notes_on_other_datasets(tmp_path):
    with store_with(tmp_path, "cifar10") as store:
        markdown = render_suite(store, "notes").markdown
    assert "pixelate is not monotone" not in markdown and "At ε =" not in markdown
