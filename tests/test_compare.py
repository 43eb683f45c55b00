"""`cbbench compare`: two small stores (or two runs of one) built with the Store API, no model involved."""
from __future__ import annotations

import numpy as np
import pytest

from cbbench.cli import main
from cbbench.report.compare import compare_blocks, load_sides, to_html, to_markdown
from cbbench.store import Store

PROV = {"versions": {"cbbench": "0.1.0", "torch": "2.13.0"}, "python": "3.11", "device": "cpu (x86_64)",
        "cpu": "Xeon", "cpu_capability": "AVX2", "threads": 2, "weights_digest": "aaaa",
        "pipeline": {"amp": "off", "channels_last": False, "compile": False, "notes": []}}
SPEC = {"name": "demo_vit", "arch": "demo", "cb": False}


def put_run(store: Store, cells: list[dict]) -> int:
    run_id = store.start_run("robustness", {"suite": "robustness"})
    for pos, c in enumerate(cells):
        key = c.get("key", f"{c['task']}-{c.get('eps', '1/255')}-{c.get('torch', '2.13.0')}-{c.get('acc')}")
        prov = {**PROV, "versions": {**PROV["versions"], "torch": c.get("torch", "2.13.0")}}
        store.put(key=key, model=c.get("model", "demo_vit"), model_spec=SPEC, weights_digest="aaaa", task=c["task"],
                  task_version=1, task_params={"attack": "pgd", "eps": c.get("eps", "1/255")}, dataset="digits",
                  limit=c.get("limit"), seed=0, status="ok", metrics={"accuracy": c["acc"]},
                  samples={"correct": np.ones(4, bool)}, provenance=prov, wall_s=1.0)
        store.add_run_cell(run_id, pos, key, c.get("model", "demo_vit"), c["task"])
    store.finish_run(run_id)
    return run_id


@pytest.fixture
def two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with Store(a) as store:
        put_run(store, [{"task": "clean", "acc": 0.9}, {"task": "pgd", "acc": 0.5},
                        {"task": "fgsm", "acc": 0.6, "key": "same"}])
    with Store(b) as store:
        put_run(store, [{"task": "clean", "acc": 0.92, "torch": "2.14.1"}, {"task": "pgd", "acc": 0.4, "eps": "2/255"},
                        {"task": "fgsm", "acc": 0.6, "key": "same"}, {"task": "clean", "acc": 0.8, "model": "other"}])
    return a, b


def test_two_folders_numbers_difference_and_cause(two_folders):
    a, b = two_folders
    blocks = compare_blocks(load_sides(a, b))
    table = next(x for x in blocks if isinstance(x, list))
    rows = {(r["model"], r["task"]): r for r in table}
    clean = rows[("demo_vit", "clean")]
    assert (clean["A"], clean["B"], clean["B − A"]) == ("90.0", "92.0", "+2.0")
    assert clean["what differs (A → B)"] == "versions.torch: 2.13.0 → 2.14.1"
    pgd = rows[("demo_vit", "pgd")]
    assert pgd["B − A"] == "-10.0" and "task params.eps: 1/255 → 2/255" in pgd["what differs (A → B)"]
    assert rows[("demo_vit", "fgsm")]["B − A"] == "+0.0"
    assert rows[("demo_vit", "fgsm")]["what differs (A → B)"] == "nothing recorded differs (same inputs, same number: " \
                                                                "a rerun)"
    assert rows[("other", "clean")]["what differs (A → B)"] == "only in B" and rows[("other", "clean")]["A"] == "–"
    markdown = to_markdown(blocks)
    assert markdown.startswith("# cbbench compare") and "| demo_vit | clean" in markdown.replace("  ", " ")
    page = to_html(blocks)
    assert '<table class="sortable">' in page and "versions.torch: 2.13.0 → 2.14.1" in page


def test_two_runs_of_one_store_and_the_cli(tmp_path, capsys):
    with Store(tmp_path) as store:
        first = put_run(store, [{"task": "clean", "acc": 0.9}])
        second = put_run(store, [{"task": "clean", "acc": 0.85, "limit": 100}])
    assert main(["compare", str(tmp_path), "--runs", str(first), str(second), "--html", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "limit: None → 100" in out and "-5.0" in out and f"run {first}" in out
    assert (tmp_path / "c.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("args, message", [
    ([], "two results folders (A B) or one folder and --runs N M"),
    (["B", "--runs", "1", "2"], "two results folders (A B) or one folder and --runs N M"),
    (["B"], "no results store in"),
])
def test_bad_input_exits_2_with_a_reason(tmp_path, capsys, args, message):
    with Store(tmp_path / "A") as store:
        put_run(store, [{"task": "clean", "acc": 0.9}])
    args = [str(tmp_path / x) if x in ("B",) else x for x in args]
    assert main(["compare", str(tmp_path / "A"), *args]) == 2
    assert message in capsys.readouterr().err
