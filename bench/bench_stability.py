"""Does the embedded default reach the same verdicts on another machine?

Runs the README's main job (`cbbench run --suite robustness`, training included) from scratch
under stand-ins for other CPUs: the machine's own float kernels and AVX2 kernels
(ATEN_CPU_CAPABILITY=avx2), each with 2 and with 1 torch thread(s). Each kernel set gets its own
checkpoint cache, so every model is trained again under it; its two thread counts share that cache
(training runs on one thread whatever the count, tests/test_stability.py checks the weights bit for
bit), and each condition evaluates into its own results folder. Writes a table of the verdicts, the
mean per-seed Δ behind each, whether the trained weights differ, and the wall time of each run.

    python bench/bench_stability.py --out results/bench/stability.md   # about 20 min on 2 quiet cores
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, environment, checkpoint cache): the first condition of each cache trains, the second reuses it.
CONDITIONS = [
    ("native kernels, 2 threads", {}, "native"),
    ("native kernels, 1 thread", {"OMP_NUM_THREADS": "1"}, "native"),
    ("AVX2 kernels, 2 threads", {"ATEN_CPU_CAPABILITY": "avx2"}, "avx2"),
    ("AVX2 kernels, 1 thread", {"ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}, "avx2"),
]


def run(condition_env: dict, work: Path, checkpoints: Path) -> tuple[dict, float]:
    env = {**os.environ, **condition_env}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cbbench", "run", "--suite", "robustness", "--results", str(work / "results"),
                    "--checkpoints", str(checkpoints)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    return json.loads((work / "results" / "robustness.json").read_text()), wall


def digests(work: Path) -> dict[str, str]:
    """Weights digest of each model, from the report's provenance lines."""
    out = {}
    for line in (work / "results" / "robustness.md").read_text().splitlines():
        if line.startswith("  - `") and "weights sha256" in line:
            out[line.split("`")[1]] = line.split("weights sha256 ")[1].split("…")[0]
    return out


def _num(verdict: dict, key: str) -> str:
    value = verdict.get(key)
    return "–" if value is None else f"{(100 if verdict.get('percent') else 1) * value:+.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    from cbbench.machine import cpu_model

    rows, weights, verdicts = [], {}, {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name, env, cache in CONDITIONS:
            work = Path(tmp) / name.replace(" ", "_").replace(",", "")
            report, wall = run(env, work, Path(tmp) / f"checkpoints-{cache}")
            verdicts[name] = {v["claim"]: v for v in report["verdicts"]}
            weights[name] = digests(work)
            rows.append((name, wall))
            print(f"{name}: {wall:.0f} s", file=sys.stderr)
    claims = list(next(iter(verdicts.values())))
    names = [n for n, _, _ in CONDITIONS]
    lines = ["# Verdict stability of the embedded default across stand-ins for other CPUs", "",
             f"Command: `python bench/bench_stability.py --out results/bench/stability.md`; machine: {cpu_model()} "
             f"({os.cpu_count()} cores, native kernels {torch.backends.cpu.get_cpu_capability()}), torch "
             f"{torch.__version__}. Each condition trains every model of `cbbench run --suite robustness` from "
             "scratch under each kernel set (its two thread counts share the trained checkpoints), then "
             f"evaluates them. Load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
             "(2 cores: the run times are only comparable with each other).", "",
             "| claim | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for claim in claims:
        cells = []
        for n in names:
            v = verdicts[n].get(claim)
            cells.append("–" if v is None else f"{v['verdict']} ({_num(v, 'mean')} [{_num(v, 'low')}, {_num(v, 'high')}])")
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    same = all(verdicts[n][c]["verdict"] == verdicts[names[0]][c]["verdict"] for n in names for c in claims)
    base = weights[names[0]]
    lines += ["", "Mean per-seed Δ (CB − baseline; accuracies in percentage points) and its 95% t-interval in "
              "brackets.", "",
              f"**Verdicts identical across all conditions: {'yes' if same else 'NO'}.**", "",
              "| condition | run, s (training included where the cache was new) | models whose weights differ from the first condition |",
              "|---|---|---|"]
    for name, wall in rows:
        differ = sum(weights[name].get(m) != d for m, d in base.items())
        lines.append(f"| {name} | {wall:.0f} | {differ} of {len(base)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
