"""The command line: builds a config, calls the runner and the report. The only place that prints."""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

from cbbench.registry import UnknownNameError

EXIT_USAGE, EXIT_FAILED_CELLS = 2, 1
REPORT_FORMATS = ("md", "csv", "json", "html")  # as cbbench.report.REPORT_FORMATS (not imported: it loads pandas)


def _progress_factory():
    from tqdm.auto import tqdm

    def progress(total: int, desc: str, unit: str = "img"):
        return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)
    return progress


def cmd_run(args) -> int:
    from cbbench.report import write_reports
    from cbbench.runner import RunConfig, run

    config = RunConfig(suite=args.suite, models=args.models, tasks=args.tasks, data_root=args.data_root,
                       results=args.results, checkpoints=args.checkpoints, limit=args.limit, device=args.device,
                       seed=args.seed, batch_size=args.batch_size, force=args.force, amp=args.amp,
                       channels_last=args.channels_last, compile=args.compile, decode=args.decode)
    if args.wandb or args.tensorboard:  # a missing package: exit 2 now, not after the run
        from cbbench.loggers import require

        require(args.wandb, args.tensorboard)
    t0 = time.perf_counter()
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 prints and reports
    summary = run(config, progress=_progress_factory() if main_rank else None,
                  on_event=(lambda msg: print(msg, file=sys.stderr)) if main_rank else None)
    if not main_rank:  # (the process group is gone by now: is_main() would say True on every rank)
        return EXIT_FAILED_CELLS if summary.failed else 0
    files = write_reports(summary.results_dir, [summary.suite], REPORT_FORMATS)
    files += _exports(summary.results_dir, summary.suite, args)
    counts = {s: sum(o.status == s for o in summary.outcomes) for s in ("ok", "cached", "skipped", "failed")}
    print(f"done in {time.perf_counter() - t0:.1f} s: {counts['ok']} computed, {counts['cached']} reused from "
          f"the store, {counts['skipped']} skipped, {counts['failed']} failed")
    for path in files:
        print(f"wrote {path}")
    if summary.failed:
        print("failed cells (see the report's 'Skipped or failed' section):", file=sys.stderr)
        for o in summary.failed:
            print(f"  {o.task} / {o.model}: {o.reason}", file=sys.stderr)
    if summary.nonfinite:
        print("non-finite outputs (the report withholds these numbers and every comparison that uses them):",
              file=sys.stderr)
        for o in summary.nonfinite:
            print(f"  {o.task} / {o.model}: NaN or infinite logits on {o.nonfinite} image(s); check the "
                  "checkpoint", file=sys.stderr)
    if counts["skipped"] and not counts["ok"] + counts["cached"]:  # a green exit would hide that nothing ran
        first = next(o for o in summary.outcomes if o.status == "skipped")
        print(f"nothing was measured: every cell was skipped ({first.task} / {first.model}: {first.reason})",
              file=sys.stderr)
        return EXIT_FAILED_CELLS
    return EXIT_FAILED_CELLS if summary.failed or summary.nonfinite else 0


def cmd_report(args) -> int:
    from cbbench.paths import results_dir
    from cbbench.report import write_reports

    if args.suite:
        from cbbench.suites import SUITES

        from cbbench.suite_file import is_suite_file, read_suite_file, stored_suites

        if args.suite not in SUITES and is_suite_file(args.suite):  # its report is stored under its name:
            args.suite = read_suite_file(args.suite).name

        if args.suite not in stored_suites(args.results):  # suite files, cbbench.evaluate runs: in the store only
            SUITES.get(args.suite)  # an unknown name: exit 2 with "did you mean"
    root = results_dir(args.results)
    if not (root / "cbbench.sqlite").is_file():
        print(f"error: no results store in {root}; run 'cbbench run --suite robustness' first "
              "(or point --results at the directory that holds cbbench.sqlite)", file=sys.stderr)
        return EXIT_USAGE
    if args.run is not None:
        from cbbench.store import Store

        with Store(root) as store:
            run = store.run(args.run)
        if run is None:
            print(f"error: the store in {root} has no run {args.run}; 'cbbench runs' lists them", file=sys.stderr)
            return EXIT_USAGE
        if args.suite and args.suite != run.suite:
            print(f"error: run {args.run} is a run of suite {run.suite!r}, not {args.suite!r}", file=sys.stderr)
            return EXIT_USAGE
        args.suite = run.suite
    files = write_reports(root, [args.suite] if args.suite else None, args.format, run_id=args.run)
    if args.log_samples:
        from cbbench.suite_file import stored_suites

        for suite in [args.suite] if args.suite else stored_suites(str(root)):
            files += _exports(root, suite, args)
    if not files:
        what = f"suite {args.suite!r}" if args.suite else "any suite"
        print(f"error: the store {root / 'cbbench.sqlite'} has no results for {what}; nothing to report "
              "('cbbench runs' lists what it has)", file=sys.stderr)
        return EXIT_USAGE
    for path in files:
        print(f"wrote {path}")
    return 0


def _exports(results_dir, suite: str, args) -> list:
    """--log-samples, --wandb, --tensorboard after a run (or a report): files written, trackers named."""
    files = []
    if args.log_samples:
        from cbbench.samples import export_samples

        files += export_samples(results_dir, suite)
    if getattr(args, "wandb", False) or getattr(args, "tensorboard", False):
        from cbbench.loggers import log_headlines

        for line in log_headlines(results_dir, suite, wandb=args.wandb, tensorboard=args.tensorboard):
            print(f"logged to {line}")
    return files


def cmd_runs(args) -> int:
    """Every run kept in the store: what it ran and how its cells ended."""
    from datetime import datetime

    from tabulate import tabulate

    from cbbench.paths import results_dir
    from cbbench.store import Store, shown_run

    root = results_dir(args.results)
    if not (root / "cbbench.sqlite").is_file():
        print(f"error: no results store in {root}; run 'cbbench run' first (or pass --results DIR)", file=sys.stderr)
        return EXIT_USAGE
    with Store(root) as store:
        runs = store.runs(args.suite)
    shown = {shown_run([r for r in runs if r.suite == s]).run_id for s in {r.suite for r in runs}}
    rows = []
    for r in runs:
        models, tasks = r.config.get("models"), r.config.get("tasks")
        rows.append({"run": r.run_id, "started": datetime.fromtimestamp(r.started).strftime("%Y-%m-%d %H:%M"),
                     "suite": r.suite, "models": ", ".join(models) if models else "(suite's)",
                     "tasks": ", ".join(tasks) if tasks else "(suite's)",
                     **{s: r.counts.get(s, 0) for s in ("ok", "cached", "skipped", "failed")},
                     "state": ("failed" if r.failed else "finished") if r.finished else "unfinished",
                     "report": "shown" if r.run_id in shown else ""})
    if not rows:
        print(f"no runs{f' of suite {args.suite}' if args.suite else ''} in {root / 'cbbench.sqlite'}")
        return 0
    width = max(20, (shutil.get_terminal_size().columns - 90) // 2)  # models and tasks share what is left
    print(tabulate(rows, headers="keys", maxcolwidths=[width if h in ("models", "tasks") else None for h in rows[0]]))
    print("\n'cbbench report --run N' writes the report of run N (default: the 'shown' run of each suite)")
    return 0


def cmd_store(args) -> int:
    from cbbench.paths import results_dir
    from cbbench.store_repair import check, repair

    root = results_dir(args.results)
    if args.action == "check":
        problems = check(root)
        for p in problems[:50]:
            print(p)
        if len(problems) > 50:
            print(f"... and {len(problems) - 50} more")
        print(f"{root / 'cbbench.sqlite'}: " + ("ok" if not problems else
              f"{len(problems)} problem(s); 'cbbench store repair --results {root}' rescues the readable cells"))
        return 1 if problems else 0
    result = repair(root)
    for p in result["problems"]:
        print(p)
    print(f"moved the damaged store to {result['moved_to']}; copied into a new {root / 'cbbench.sqlite'}: "
          + ", ".join(f"{n} {table}" for table, n in result["copied"].items())
          + ". Rerun your command: cells that were lost are computed again.")
    return 0


def cmd_compare(args) -> int:
    """Two results folders (or two runs of one) side by side, as markdown on stdout and optionally an HTML page."""
    from pathlib import Path

    from cbbench.report.compare import compare_blocks, load_sides, to_html, to_markdown

    blocks = compare_blocks(load_sides(args.a, args.b, tuple(args.runs) if args.runs else None, args.suite))
    print(to_markdown(blocks))
    if args.html:
        Path(args.html).write_text(to_html(blocks), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def cmd_ls(args) -> int:
    widths = None  # protocols are long sentences: wrapped to the terminal's width
    if args.what == "models":
        from cbbench.models.zoo import MODELS

        rows = [(n, s.arch, "yes" if s.cb else "", s.baseline or "", s.weights, s.dataset, s.description)
                for n, s in MODELS.items()]
        headers = ["model", "arch", "CB", "baseline", "weights", "dataset", "description"]
    elif args.what == "tasks" and args.params:
        from cbbench.suite_file import params_table

        print(params_table())
        return 0
    elif args.what == "tasks":
        from cbbench.tasks import TASKS

        rows = [(n, t.version, t.protocol) for n, t in TASKS.items()]
        headers = ["task", "version", "protocol"]
        widths = [None, None, max(30, shutil.get_terminal_size().columns - 4 - max(map(len, TASKS)) - 9)]
    elif args.what == "suites":
        from cbbench.suites import SUITES

        rows = [(n, s.dataset, ", ".join(s.models), ", ".join(s.tasks)) for n, s in SUITES.items()]
        headers = ["suite", "dataset", "models", "tasks"]
    elif args.what == "recipes":
        from cbbench.train import RECIPES as ZOO_RECIPES
        from cbbench.training.recipe import RECIPES

        rows = [(n, "cbbench train --recipe", r.init, r.epochs, r.batch_size, r.description)
                for n, r in RECIPES.items()]
        rows += [(n, "cbbench train MODEL (zoo models)", "scratch", r.epochs, r.batch_size, r.dataset)
                 for n, r in ZOO_RECIPES.items()]
        headers = ["recipe", "used by", "start", "epochs", "batch", "description"]
    else:
        from cbbench.data.registry import DATASETS

        rows = [(n,) for n in DATASETS]
        headers = ["dataset"]
    from tabulate import tabulate

    print(tabulate(rows, headers=headers, tablefmt="simple", maxcolwidths=widths))
    return 0


def cmd_datasets_check(args) -> int:
    from tabulate import tabulate

    from cbbench.data.check import check_datasets
    from cbbench.paths import data_root

    root = data_root(args.data_root)
    if root is None:
        print("error: no data root: pass --data-root DIR or set CBBENCH_DATA (see datasets/README.md)",
              file=sys.stderr)
        return EXIT_USAGE
    rows = check_datasets(root)
    print(tabulate(rows, headers="keys", maxcolwidths=[None] * (len(rows[0]) - 1) + [70] if rows else None))
    return 0


def cmd_datasets_make_c(args) -> int:
    from cbbench.corruptions.catalog import ALL_CORRUPTIONS, SEVERITIES
    from cbbench.data.make_c import make_c
    from cbbench.runner import pick_device

    corruptions = args.corruptions or list(ALL_CORRUPTIONS)
    unknown = [c for c in corruptions if c not in ALL_CORRUPTIONS]
    bad_severity = [s for s in args.severities if s not in SEVERITIES]
    if unknown or bad_severity:
        print(f"error: unknown corruption(s) {unknown} or severity(ies) {bad_severity}; corruptions: "
              f"{', '.join(ALL_CORRUPTIONS)}; severities: 1..5", file=sys.stderr)
        return EXIT_USAGE
    t0 = time.perf_counter()
    counts = make_c(args.src, args.out, corruptions, args.severities, engine=args.engine, seed=args.seed,
                    batch_size=args.batch_size, limit=args.limit, device=pick_device(args.device),
                    progress=_progress_factory())
    print(f"made ImageNet-C in {args.out} in {time.perf_counter() - t0:.1f} s: {counts['written']} files written, "
          f"{counts['existing']} already there, {counts['corrupt']} undecodable source image(s) skipped")
    return 0


def cmd_train(args) -> int:
    from cbbench.runner import pick_device

    device = pick_device(args.device or ("auto" if args.recipe else "cpu"))  # clear error for cuda without a GPU
    if args.recipe:
        from pathlib import Path

        from cbbench import distributed
        from cbbench.paths import data_root
        from cbbench.training.loop import Runtime, train_pair
        from cbbench.training.recipe import parse_sets

        if args.models:
            raise ValueError(f"--recipe trains a baseline/CB pair of --arch; drop the model names {args.models} "
                             "(those are for the demo/CIFAR recipes without --recipe)")
        if not args.arch or not args.out:
            raise ValueError("--recipe needs --arch TIMM_ARCH (e.g. deit_tiny_patch16_224) and --out DIR")
        with distributed.process_group(device.type):  # under torchrun: one process per GPU
            device = distributed.local_device(device)
            if device.type == "cuda":
                import torch

                torch.cuda.set_device(device)
            sets = {**parse_sets(args.set), **({"epochs": args.epochs} if args.epochs else {})}
            main_rank = distributed.is_main()
            per_process_cpus = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            runtime = Runtime(device, amp=args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda"),
                              channels_last=args.channels_last, compile=args.compile,
                              workers=args.workers if args.workers is not None else max(1, min(8, per_process_cpus)),
                              save_every=args.save_every, progress=main_rank)
            out = Path(args.out)
            t0 = time.perf_counter()
            train_pair(args.recipe, args.arch, data_root(args.data_root), out, runtime, sets=sets, seed=args.seed,
                       pretrained=args.pretrained, init=args.init, resume=args.resume,
                       say=(lambda msg: print(msg, file=sys.stderr)) if main_rank else None)
        if main_rank:
            print(f"trained the {args.arch} pair in {time.perf_counter() - t0:.0f} s: {out / 'baseline.pth'}, "
                  f"{out / 'cb.pth'}; model card {out / 'card.md'}")
        return 0

    from cbbench.models.zoo import resolve
    from cbbench.train import checkpoint_path, train

    for name in args.models or ["demo_vit", "demo_vit_cb"]:
        spec = resolve(name)
        if spec.weights != "train":
            raise ValueError(f"model {name} has weights={spec.weights!r}; only models with a training recipe "
                             "(weights='train', e.g. demo_vit, cifar10_vit) can be trained by cbbench")
        path = checkpoint_path(spec, args.checkpoints)
        if path.is_file() and not args.force:
            print(f"{name}: already trained at {path} (--force retrains)")
            continue
        if args.force:
            path.unlink(missing_ok=True)

        def show(entry):
            print(f"{entry['model']} epoch {entry['epoch']}/{entry['epochs']}: loss {entry['loss']:.3f}, "
                  f"train acc {100 * entry['train_acc']:.1f}%, {entry['seconds']:.1f} s", file=sys.stderr)
        train(spec, path, progress=show, device=device, data_root=args.data_root)
        print(f"{name}: trained, checkpoint {path}")
    return 0


DESCRIPTION = """\
cbbench measures how robust Vision Transformers are with and without Context
Broadcasting (CB): clean accuracy, common corruptions, adversarial attacks,
calibration and attention density, each CB model paired with its baseline on
the same images, with confidence intervals and verdicts on the paper's claims.
Results are cached in a results folder, so reruns only compute what is new.

Most common:
  cbbench run                      evaluate the default suite (tiny ViTs on
                                   digits, no download) and write the report
                                   to results/robustness.{md,html,csv,json}
  cbbench report --format html     re-render the reports from the stored results

See 'cbbench COMMAND -h' for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    from cbbench.corruptions.catalog import ENGINES, REFERENCE_ENGINE, TORCH_ENGINE  # torch-free

    parser = argparse.ArgumentParser(prog="cbbench", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="evaluate models on a suite's tasks and write the report")
    p.add_argument("--suite", help="suite name (cbbench ls suites) or your own suite file, e.g. my_suite.yaml "
                                   "(docs/suite_files.md); default: robustness, or robustness_imagenet "
                                   "when a data root is given")
    p.add_argument("--models", nargs="+", help="zoo names or ad-hoc timm:ARCH[+cb][@CKPT] (default: the suite's)")
    p.add_argument("--tasks", nargs="+", help="task names (default: the suite's)")
    p.add_argument("--data-root", help="root of the datasets (or CBBENCH_DATA); none: the embedded default")
    p.add_argument("--results", help="results directory (or CBBENCH_RESULTS; default ./results)")
    p.add_argument("--checkpoints", help="where trained demo checkpoints are cached (or CBBENCH_CKPT)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N test images (smoke tests)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of corruptions and attack random starts")
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="images per forward pass (default 128); lower it if memory runs out")
    p.add_argument("--force", action="store_true", help="recompute cells already in the store")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off",
                   help="autocast dtype of the evaluation forward (attacks keep fp32 gradients); changes numbers, "
                        "so such cells are stored apart (default: off, plain fp32)")
    p.add_argument("--channels-last", action="store_true", help="NHWC images and weights (may speed up GPUs)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for the evaluation forward (falls back to eager with a warning "
                        "if compiling fails; compiling takes minutes on a CPU)")
    p.add_argument("--decode", choices=["auto", "cpu", "gpu"], default="auto",
                   help="where image files are decoded and resized: cpu (PIL in DataLoader workers, the reference), "
                        "gpu (torchvision/nvjpeg on the CUDA device; pixels differ slightly, so such cells are "
                        "stored apart), auto (gpu when evaluating on CUDA); workers: CBBENCH_NUM_WORKERS "
                        "(default: one per available core)")
    p.add_argument("--log-samples", action="store_true",
                   help="also write each cell's per-image outcomes to <results>/samples/<suite>/<model>__<task>.jsonl "
                        "(and .parquet if pyarrow is installed); columns: docs/samples.md")
    p.add_argument("--wandb", action="store_true", help="log the headline metrics to Weights & Biases "
                                                        "(pip install 'cbbench[wandb]')")
    p.add_argument("--tensorboard", action="store_true", help="log the headline metrics for TensorBoard under "
                                                              "<results>/tensorboard (pip install 'cbbench[tensorboard]')")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="re-render reports from the results store")
    p.add_argument("--results", help="results directory (default ./results)")
    p.add_argument("--suite", help="only this suite (default: every suite in the store)")
    p.add_argument("--format", type=report_formats, default=",".join(REPORT_FORMATS),
                   help="comma-separated files to write per suite: md (the leaderboard), csv and json (the numbers), "
                        "html (one self-contained page: sortable tables, plots inline); default: all four")
    p.add_argument("--run", type=positive_int, help="render run N ('cbbench runs' lists them) instead of the latest "
                                                     "run with results; its cells exactly as that run left them")
    p.add_argument("--log-samples", action="store_true",
                   help="also write per-image outcomes (JSONL, + Parquet with pyarrow) under <results>/samples/")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("runs", help="list the runs kept in the results store (id, date, suite, cells ok/failed)")
    p.add_argument("--results", help="results directory (default ./results)")
    p.add_argument("--suite", help="only runs of this suite")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("store", help="check the results store, or rescue a damaged one")
    p.add_argument("action", choices=["check", "repair"],
                   help="check: read everything, report problems, change nothing (exit 1 if any); repair: move the "
                        "store aside and copy every readable cell and run into a new one")
    p.add_argument("--results", help="results directory (default ./results)")
    p.set_defaults(func=cmd_store)

    p = sub.add_parser("compare", help="two results folders, or two runs of one, side by side: per model and task "
                                        "both numbers, the difference and what changed between them")
    p.add_argument("a", metavar="A", help="a results folder (the one holding cbbench.sqlite)")
    p.add_argument("b", metavar="B", nargs="?", help="a second results folder (or use --runs N M on A alone)")
    p.add_argument("--runs", nargs=2, type=positive_int, metavar=("N", "M"),
                   help="compare runs N and M of the store in A ('cbbench runs' lists them)")
    p.add_argument("--suite", help="only this suite (default: every suite both folders have results for)")
    p.add_argument("--html", metavar="FILE", help="also write the comparison as a self-contained HTML page")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ls", help="list registered models, tasks, suites, datasets or training recipes")
    p.add_argument("what", choices=["models", "tasks", "suites", "datasets", "recipes"],
                   help="what to list: zoo models, tasks (with their protocols), suites, datasets or training recipes")
    p.add_argument("--params", action="store_true", help="with 'tasks': each task's parameters and their defaults "
                                                         "(what a suite file may set)")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("datasets", help="check datasets under a data root, or make ImageNet-C from val")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("check", help="present / missing / incomplete per dataset, counting files")
    q.add_argument("--data-root", help="root of the datasets (or CBBENCH_DATA)")
    q.set_defaults(func=cmd_datasets_check)
    q = actions.add_parser("make-c", help="write ImageNet-C (<corruption>/<severity>/<wnid>/<file>.JPEG) made "
                                          "from an ImageNet val folder; resumable")
    q.add_argument("--src", required=True, help="ImageNet val folder (<wnid>/<file>.JPEG)")
    q.add_argument("--out", required=True, help="output folder, e.g. <data root>/imagenet-c")
    q.add_argument("--corruptions", nargs="+", help="default: all 19 (15 benchmark + 4 held-out)")
    q.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="default: 1 2 3 4 5")
    q.add_argument("--engine", choices=ENGINES, default=TORCH_ENGINE,
                   help=f"{TORCH_ENGINE}: cbbench's batched engine (CPU or GPU; default); {REFERENCE_ENGINE}: the "
                        "reference implementation, per image (the names tasks and suite files use)")
    q.add_argument("--seed", type=seed_int, default=0, help="seed of the corruptions' random draws (default 0)")
    q.add_argument("--batch-size", type=positive_int, default=64, help="also fixes the torch engine's random draws")
    q.add_argument("--limit", type=positive_int, help="only the first N val images (in sorted order)")
    q.add_argument("--device", default="auto", help="cpu, cuda ... (the torch engine runs there)")
    q.set_defaults(func=cmd_datasets_make_c)

    p = sub.add_parser("train", help="train demo/CIFAR models into the checkpoint cache, or (--recipe) an ImageNet "
                                      "baseline/CB pair with timm's training stack")
    p.add_argument("models", nargs="*", default=[], help="demo or CIFAR zoo models (default: demo_vit demo_vit_cb)")
    p.add_argument("--checkpoints", help="checkpoint cache directory (or CBBENCH_CKPT)")
    p.add_argument("--data-root", help="where CIFAR models read their training data, and --recipe reads "
                                       "imagenet/train (and imagenet/val for held-out top-1) (or CBBENCH_DATA)")
    p.add_argument("--force", action="store_true", help="retrain even if a checkpoint exists")
    p.add_argument("--device", help="cpu, cuda, cuda:1, auto ... (default: cpu, bit-for-bit reproducible; "
                                    "with --recipe: auto)")
    q = p.add_argument_group("ImageNet pair (--recipe; docs/train_imagenet.md)")
    q.add_argument("--recipe", help="training recipe of the pair ('cbbench ls recipes'): deit, cb_finetune, smoke")
    q.add_argument("--arch", help="timm architecture of both arms, e.g. deit_tiny_patch16_224")
    q.add_argument("--out", help="folder for baseline.pth, cb.pth, card.json/.md, logs and the resumable state")
    q.add_argument("--pretrained", action="store_true", help="start both arms from timm's pretrained weights")
    q.add_argument("--init", help="start both arms from this state_dict of --arch (e.g. your baseline.pth)")
    q.add_argument("--seed", type=seed_int, default=0, help="initialization, data order and every augmentation draw")
    q.add_argument("--epochs", type=positive_int, help="override the recipe's epochs (the lr schedule follows)")
    q.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    q.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override recipe values, read as YAML: --set micro_batch=64 aa=null")
    q.add_argument("--amp", choices=["auto", "off", "bf16"], default="auto",
                   help="bf16 autocast (default auto: on for CUDA, off on CPU)")
    q.add_argument("--channels-last", action="store_true", help="NHWC images and weights")
    q.add_argument("--compile", action="store_true", help="torch.compile both arms (minutes of compiling first)")
    q.add_argument("--workers", type=int, help="DataLoader workers per process (default: CPUs per process, at most 8)")
    q.add_argument("--save-every", type=positive_int, default=500, metavar="K",
                   help="also checkpoint every K optimizer steps inside an epoch (default 500)")
    p.set_defaults(func=cmd_train)
    return parser


def _whole_number(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (argparse then exits 2 with the option's name)."""
    value = _whole_number(text, "a whole number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed in 0 .. 2**63 - 1 (what numpy's SeedSequence and SQLite both accept)."""
    value = _whole_number(text, "a whole number")
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1, not {value}")
    return value


def report_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in REPORT_FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"unknown format(s) {unknown or [text]}; choose from "
                                         f"{', '.join(REPORT_FORMATS)}")
    return formats


def _terminated(signum, frame):
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    if threading_main():
        signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from cbbench.errors import CheckpointError, OutputError, StoreError

    try:
        return args.func(args)
    except (UnknownNameError, FileNotFoundError, CheckpointError, StoreError, OutputError, ValueError,
            PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.verbose:
            logging.exception("details")
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished cells are in the store; rerun the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == 143:
            print("terminated (SIGTERM): finished cells are in the store; rerun the same command to resume",
                  file=sys.stderr)
        raise
    except BrokenPipeError:  # e.g. `cbbench ls models | head -1`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except Exception as exc:  # a bug or an environment problem we did not foresee: one line, traceback under -v
        if args.verbose:
            raise
        print(f"error: {exc.__class__.__name__}: {exc}\n(unexpected: rerun with -v for the traceback, and please "
              "report it; finished cells are in the store)", file=sys.stderr)
        return EXIT_FAILED_CELLS


def threading_main() -> bool:
    """Signal handlers can only be set from the main thread (not when main() runs inside a worker thread)."""
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
