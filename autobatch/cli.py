"""``autobatch``: thin commands. Each parses, makes one library call, renders the result.

A user error (``AutobatchError``, including the user's own code raising) prints one line on
stderr and exits 2; its traceback only with ``--debug`` or ``AUTOBATCH_DEBUG=1``. Ctrl-C exits
130 with finished trials kept; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from ._cli import options as o
from .errors import AutobatchError

PRIORITIES = ("balanced", "accuracy", "speed")
FORMATS = ("json", "toml", "hf", "lightning")  # = recommender.EXPORT_FORMATS (kept here: no import at parse)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autobatch")
    except PackageNotFoundError:  # run from a checkout that was never installed
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = o.Parser(prog="autobatch", description=(
        "Find the batch size, learning rate and accumulation steps to train with, on this hardware."))
    parser.add_argument("--version", action="version", version=f"autobatch {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tune", help="probe, search, recommend")
    o.workload_options(p)
    o.study_options(p, required_name=False)
    p.add_argument("--budget", type=o.duration, metavar="DURATION", help=(
        "wall-clock budget for the whole run: 90s, 10m, 4h, 1h30m (default: 10m, or none with --n-trials)"))
    p.add_argument("--n-trials", type=int, metavar="N",
                   help="number of trials, study-wide across workers (default: as many as the budget allows)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="study file (TOML), e.g. studies/resnet18-digits.toml (default: none, flags only)")
    p.add_argument("--pruner", metavar="NAME", help="median | halving | hyperband | none (default: median)")
    p.add_argument("--epochs", type=float, metavar="EPOCHS",
                   help="training length per trial, in epochs (default: planned from the budget)")
    p.add_argument("--workers", type=int, metavar="N", help="local worker processes (default: 1)")
    p.add_argument("--batch-size-min", type=int, metavar="N",
                   help="smallest micro-batch searched, a power of two (default: 8)")
    p.add_argument("--batch-size-max", type=int, metavar="N",
                   help="largest micro-batch searched, a power of two (default: 256, less if the data is smaller)")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not enqueue the reference configurations (default: enqueued)")
    verification = p.add_mutually_exclusive_group()
    verification.add_argument("--verify-runs", type=int, metavar="N", help=(
        "re-trainings of the answer with fresh seeds, 0 to 5; also verify_runs in the study file "
        "(default: 1, or 2 when the study plans 16 trials or more)"))
    verification.add_argument("--no-verify", dest="verify_runs", action="store_const", const=0, help=(
        "do not re-train the answer: the same as --verify-runs 0; the answer says it was not verified "
        "(default: verified)"))
    p.add_argument("--no-noise-probe", dest="noise_probe", action="store_false", default=None, help=(
        "skip the gradient-noise probe before the search (2%% of the planned study): the critical batch is not "
        "measured at the start and the search is not centred on it; also noise_probe = false in the "
        "study file (default: probed)"))
    p.add_argument("--create-only", action="store_true",
                   help="create the study and exit, for workers to join (default: run it)")
    o.json_option(p)
    o.recipe_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("worker", help="join an existing study and run its trials")
    o.study_options(p, required_name=True)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where trials train (default: auto, CUDA when available)")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="where cifar10 lives (default: ./data)")
    p.add_argument("--seed", type=o.natural, metavar="N",
                   help="sampler seed base; each trial adds its number (default: the study's)")
    p.add_argument("--num-workers", type=o.natural, metavar="N",
                   help="data loader worker processes per trial (default: what fits this machine)")
    p.add_argument("--allow-import", action="append", default=[], metavar="PATH", help=(
        "code (pkg.module:function, pkg.module:*) or data (imagefolder:PATH) the study may run here; "
        "repeatable (default: $AUTOBATCH_ALLOW_IMPORTS, else none)"))
    p.add_argument("--config", type=Path, metavar="FILE", help=(
        "the study file: its model, dataset, step and recipe paths are allowed (default: none)"))
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("probe", help="measure the memory model and the largest micro-batch under the cap")
    o.workload_options(p)
    p.add_argument("--batch-size-max", type=int, default=256, metavar="N",
                   help="largest micro-batch to consider (default: 256, as tune's search space)")
    o.json_option(p)
    o.recipe_options(p, lr_rule=False)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("recommend", help="the recommended setting from stored trials (no training)")
    o.study_options(p, required_name=True)
    p.add_argument("--max-memory", type=o.size, metavar="SIZE",
                   help="only settings whose predicted peak fits, e.g. 4GiB (default: no limit)")
    p.add_argument("--max-epoch-time", type=o.duration, metavar="DURATION",
                   help="only settings whose predicted epoch time is under this, e.g. 30s (default: no limit)")
    p.add_argument("--min-accuracy", type=float, metavar="FRACTION",
                   help="only settings predicted at least this accurate, 0..1 (default: no limit)")
    p.add_argument("--priority", choices=PRIORITIES, default="balanced", help=(
        "balanced: the knee of the metric/epoch-time front; accuracy: the best predicted metric; speed: the "
        "fastest within 1 point of it (default: balanced)"))
    p.add_argument("--format", choices=FORMATS, help=(
        "json: the whole recommendation; toml: the setting and its [recipe]; hf: transformers "
        "TrainingArguments keywords (JSON); lightning: lightning.Trainer keywords, DataLoader batch size, "
        "optimizer and scheduler (JSON) (default: a short text block)"))
    p.add_argument("--json", action="store_true", help="the same as --format json (default: off)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("report", help="plots, a CSV and a summary of a study's trials")
    o.study_options(p, required_name=True)
    p.add_argument("--out", type=Path, default=Path("report"), metavar="DIR", help="output folder (default: ./report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("studies", help="the studies in a storage: trials by state, best value, stored answer")
    o.storage_option(p)
    o.json_option(p, "the list")
    p.set_defaults(func=cmd_studies)

    p = sub.add_parser("show", help="a study's answer and its best trials")
    o.study_options(p, required_name=True)
    p.add_argument("--top", type=int, default=5, metavar="N", help="how many of the best trials to list (default: 5)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("dashboard", help="optuna-dashboard on the study storage")
    o.storage_option(p)
    p.add_argument("--host", default="127.0.0.1", metavar="ADDRESS",
                   help="address to bind; the dashboard has no authentication (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, metavar="N", help="TCP port to serve on (default: 8080)")
    p.set_defaults(func=cmd_dashboard)
    for command_parser in (parser, *sub.choices.values()):  # before or after the command
        o.debug_option(command_parser)
    return parser


def _tune_settings(args: argparse.Namespace):
    from .search import build_settings

    space = {k: v for k, v in (("batch_size_min", args.batch_size_min),
                               ("batch_size_max", args.batch_size_max),
                               ("base_lr", args.base_lr), ("scaling_rule", args.scaling_rule)) if v is not None}
    overrides = {
        "model": args.model, "dataset": args.dataset, "data_dir": args.data_dir,
        "budget_s": args.budget, "n_trials": args.n_trials, "max_memory_bytes": args.max_memory,
        "storage": args.storage, "study_name": args.study_name, "seed": args.seed,
        "device": args.device, "pruner": args.pruner, "epochs": args.epochs,
        "workers": args.workers, "baselines": False if args.no_baselines else None,
        "create_only": args.create_only or None, "space": space, "recipe": o.recipe_overrides(args),
        "step": args.step, "step_eval": args.step_eval, "num_workers": args.num_workers,
        "verify_runs": args.verify_runs, "noise_probe": args.noise_probe,
    }
    return build_settings(args.config, overrides)


def cmd_tune(args: argparse.Namespace) -> int:
    from ._cli.progress import live_or_plain
    from ._cli.render import answer_text
    from .tuning import tune

    settings = _tune_settings(args)
    with live_or_plain(args.json, _say) as progress:
        outcome = tune(settings, callbacks=[progress])
    if args.json:
        _print_json({**outcome.answer, "study_name": outcome.study_name, "storage": outcome.storage,
                     "counts": outcome.counts, "wall_time_s": outcome.wall_time_s})
        return 0
    if outcome.worker:  # --create-only: nothing ran, by request
        print(f"study {outcome.study_name!r} is ready (--create-only: no trial run here); run workers on it, "
              f"on this machine or others:\n  {outcome.worker}")
    else:
        print(answer_text(outcome.answer))
    c = outcome.counts
    print(f"trials: {c['complete']} completed, {c['pruned']} pruned, {c['fail']} failed, "
          f"{c['waiting']} queued; {outcome.wall_time_s:.0f}s")
    print(f"storage: {outcome.storage}  (study {outcome.study_name!r})")
    print(f"dashboard: {outcome.dashboard}")
    if outcome.password_note:
        print(f"  ({outcome.password_note})")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from ._cli.progress import live_or_plain
    from .search import load_config
    from .storage import open_study
    from .tuning import TuneRun, allowed_imports, run_worker

    study_name = _study_name(args)
    values = load_config(args.config) if args.config else {}  # the user's own study file: its paths are allowed
    named = [values.get(k) for k in ("model", "dataset", "step", "step_eval")] + list((values.get("recipe") or {}).values())
    given = list(args.allow_import) + [p for p in named if isinstance(p, str) and ":" in p]
    study = open_study(args.storage, study_name)  # writable; never creates the schema or a file
    with live_or_plain(False, _say) as progress:
        n = run_worker(study, device_name=args.device, data_dir=args.data_dir, worker_seed=args.seed,
                       run=TuneRun([progress]), num_workers=args.num_workers, allowed=allowed_imports(given))
    _say(f"worker done: {n} trials run")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from . import memory
    from .recipe import TrainRecipe
    from .train import check_device, check_recipe, eval_runner, resolve_device, step_runner
    from .tuning import ProbeProgress, event_line, probe_summary
    from .workloads import build_model, check_model_name, load_workload

    model_name, dataset = args.model or "resnet18", args.dataset or "digits"
    check_model_name(model_name)
    if args.batch_size_max < 1:
        raise AutobatchError(f"--batch-size-max must be >= 1, got {args.batch_size_max}")
    recipe = TrainRecipe.from_dict(o.recipe_overrides(args))
    device = check_device(recipe, resolve_device(args.device or "auto"))
    cap = args.max_memory or memory.default_cap(device)
    workload = load_workload(dataset, data_dir=args.data_dir, seed=args.seed or 0)
    model = build_model(model_name, num_classes=workload.num_classes, input_shape=workload.input_shape,
                        vocab_size=workload.vocab_size)
    step, step_eval = args.step, getattr(args, "step_eval", None)
    check_recipe(model, workload.val, device, recipe, step=step, step_eval=step_eval,  # as tune does, first
                 targets=workload.targets)
    result = memory.probe(step_runner(model, dataset=workload.train, device=device, recipe=recipe, step=step),
                          device=device, cap_bytes=cap, space_max=args.batch_size_max,
                          dataset_max=len(workload.train), eval_space_max=len(workload.val),
                          run_eval=eval_runner(model, dataset=workload.val, device=device, recipe=recipe,
                                               step=step, step_eval=step_eval),
                          on_point=None if args.json else lambda p, s: _say(event_line(ProbeProgress.of(p, s))))
    if args.json:
        _print_json({"model": model_name, "dataset": dataset, "recipe": recipe.to_dict(), **result.to_dict(),
                     "train_size": len(workload.train)})
        return 0
    source = "--max-memory" if args.max_memory else f"{device.type} memory available" if device.type == "cpu" \
        else f"{device.type} memory"
    print(probe_summary(result, f"{model_name} on {dataset} ({result.device}, {recipe.optimizer}, "
                                f"{recipe.precision}):", source, train_size=len(workload.train)))
    return 0


def _study_name(args: argparse.Namespace) -> str:
    """``--study-name``, else the storage's only study (said on stderr)."""
    if args.study_name:
        return args.study_name
    from .storage import describe, only_study_name

    name = only_study_name(args.storage, args.command)
    _say(f"reading study {name!r}, the only one in {describe(args.storage)}")
    return name


def cmd_recommend(args: argparse.Namespace) -> int:
    from .recommender import recommend

    rec = recommend(_study_name(args), args.storage, max_memory=args.max_memory, max_epoch_time=args.max_epoch_time,
                    min_accuracy=args.min_accuracy, priority=args.priority)
    fmt = args.format or ("json" if args.json else None)
    print(rec.export(fmt) if fmt else rec)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    files = write_report(_study_name(args), args.storage, args.out, say=_say)
    for path in files:
        print(path)
    return 0


def cmd_studies(args: argparse.Namespace) -> int:
    from ._cli.render import studies_table
    from .storage import describe, list_studies

    rows = list_studies(args.storage)
    if args.json:
        _print_json([dataclasses.asdict(row) for row in rows])
    else:
        studies_table(rows, describe(args.storage))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import optuna

    from . import records as R
    from ._cli.render import answer_text, best_trials_table
    from .storage import open_study

    study = open_study(args.storage, _study_name(args), read_only=True)
    answer = study.user_attrs.get(R.STUDY_RECOMMENDATION)
    recipe = (study.user_attrs.get(R.STUDY_SPEC) or {}).get("recipe") or {}
    print(answer_text(answer) if answer else f"no stored answer for {study.study_name} yet: "
          "autobatch tune or autobatch dashboard stores one; autobatch recommend fits one now")
    best_trials_table(R.read_trials(study), recipe.get("metric") or "accuracy",
                      study.direction == optuna.study.StudyDirection.MAXIMIZE, args.top)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import serve

    serve(args.storage, host=args.host, port=args.port, say=_say)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    debug = getattr(args, "debug", False) or os.environ.get("AUTOBATCH_DEBUG", "") not in ("", "0")
    from .interrupts import install

    install()  # a Ctrl-C swallowed by a garbage-collector callback is raised again at the next step
    try:
        return args.func(args)
    except AutobatchError as exc:
        if debug:  # the user's own traceback too: the cause chain is printed with it
            traceback.print_exception(exc, file=sys.stderr)
        print(f"autobatch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autobatch: interrupted; finished trials are kept: run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
