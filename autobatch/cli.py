"""``autobatch``: thin commands. Each parses, makes one library call, renders the result.

A user error (``AutobatchError``, including the user's own code raising) prints one line on
stderr and exits 2; its traceback only with ``--debug`` or ``AUTOBATCH_DEBUG=1``. Ctrl-C exits
130 with finished trials kept; anything else is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import AutobatchError

PRIORITIES = ("balanced", "accuracy", "speed")
FORMATS = ("json", "toml", "hf", "lightning")  # = recommender.EXPORT_FORMATS (kept here: no import at parse)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _common(p: argparse.ArgumentParser, *, study: bool = True) -> None:
    p.add_argument("--storage", help="storage URL (default: $AUTOBATCH_STORAGE, else an embedded SQLite file)")
    if study:
        p.add_argument("--study-name", help="study name (default: MODEL-DATASET)")


def _workload_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="torchvision model name, small_cnn, mlp, or pkg.module:function")
    p.add_argument("--dataset", help="digits | mnist1d | wine | breast_cancer | synthetic[:NxCxHxW] | cifar10 | "
                                     "imagefolder:PATH | pkg.module:function")
    p.add_argument("--data-dir", type=Path, help="where cifar10 lives")
    p.add_argument("--step", help="pkg.module:function called as step(model, batch) -> loss, replacing the "
                                  "batch conventions' forward and loss (probe, throughput and trials)")
    p.add_argument("--step-eval", help="pkg.module:function called as evaluate(model, batches) -> metric "
                                       "(higher is better; with --step; default: the step's validation loss)")
    p.add_argument("--num-workers", type=int,
                   help="data loader worker processes per trial (default: what fits this machine)")
    p.add_argument("--max-memory", help="memory cap to tune for, e.g. 512MiB, 8GiB")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto")
    p.add_argument("--seed", type=int)


def _betas(text: str) -> Any:
    """``B1,B2`` as two floats; anything else is passed on as given, for the recipe to refuse in
    one line."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        return text


# Recipe flags: (flag, TrainRecipe field, argparse keywords). Unset flags keep the study file's
# value, else the default; the recipe checks every value (one line naming the option and the fix).
_RECIPE_FLAGS = (
    ("--optimizer", "optimizer", dict(metavar="NAME", help=(
        "sgd (default: Nesterov momentum 0.9, weight decay 5e-4) | adam | adamw | pkg.module:function "
        "called as function(params, lr=...)"))),
    ("--momentum", "momentum", dict(type=float, help="SGD momentum (default 0.9)")),
    ("--nesterov", "nesterov", dict(action=argparse.BooleanOptionalAction, default=None,
                                    help="SGD Nesterov momentum (default on)")),
    ("--weight-decay", "weight_decay", dict(type=float, help=(
        "weight decay (default: 5e-4 sgd, 0 adam, 0.01 adamw, decoupled for adamw)"))),
    ("--betas", "betas", dict(type=_betas, metavar="B1,B2", help="Adam/AdamW betas (default 0.9,0.999)")),
    ("--schedule", "schedule", dict(choices=("cosine", "constant", "linear", "onecycle"), help=(
        "lr schedule per optimizer step after a linear warm-up (default cosine to zero); "
        "onecycle is torch's OneCycleLR"))),
    ("--warmup", "warmup_fraction", dict(type=float, metavar="FRACTION", help=(
        "fraction of the optimizer steps spent warming up (default 0.05; onecycle: its rising phase)"))),
    ("--precision", "precision", dict(choices=("fp32", "bf16", "fp16"), help=(
        "fp32 (default) | bf16 autocast (CPU and CUDA) | fp16 autocast + GradScaler (CUDA only); "
        "the memory probe runs in it too"))),
    ("--loss", "loss", dict(metavar="NAME", help=(
        "cross_entropy (default) | bce (multi-label) | mse (regression) | pkg.module:function(outputs, targets)"))),
    ("--label-smoothing", "label_smoothing", dict(type=float, help="cross-entropy label smoothing (default 0)")),
    ("--metric", "metric", dict(metavar="NAME", help=(
        "what the study optimises: accuracy (default with cross_entropy) | top5_accuracy (any topK_accuracy) | "
        "val_loss | mae | rmse | pkg.module:function(outputs, targets) returning the batch mean"))),
    ("--metric-direction", "metric_direction", dict(choices=("maximize", "minimize"), help=(
        "for a pkg.module:function metric (default maximize); built-in metrics know their own"))),
    ("--grad-clip", "grad_clip_norm", dict(type=float, metavar="MAX_NORM", help=(
        "clip the gradients' global L2 norm to this (default: no clipping)"))),
)


def _recipe_options(p: argparse.ArgumentParser, *, lr_rule: bool = True) -> None:
    group = p.add_argument_group("training recipe (also a [recipe] table in the study file)")
    for flag, _, kwargs in _RECIPE_FLAGS:
        group.add_argument(flag, **kwargs)
    if not lr_rule:
        return
    group.add_argument("--base-lr", type=float, help=(
        "lr at effective batch 256 (default: 0.1 sgd, 1e-3 adam/adamw)"))
    group.add_argument("--scaling-rule", choices=("linear", "sqrt", "none"), help=(
        "how the lr scales with the effective batch (default: linear for sgd, sqrt for adam/adamw)"))


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe flags given, as ``TrainRecipe`` fields."""
    return {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in _RECIPE_FLAGS
            if getattr(args, flag[2:].replace("-", "_")) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autobatch", description=(
        "Find the batch size, learning rate and accumulation steps to train with, on this hardware."))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("tune", help="probe, search, recommend")
    _workload_options(p)
    _common(p)
    p.add_argument("--budget", help="wall-clock budget for the whole run: 90s, 10m, 4h, 1h30m")
    p.add_argument("--n-trials", type=int, help="number of trials (study-wide, all workers)")
    p.add_argument("--config", type=Path, help="study file (TOML), e.g. studies/resnet18-digits.toml")
    p.add_argument("--pruner", help="median (default) | halving | hyperband | none")
    p.add_argument("--epochs", type=float, help="training length per trial (default: planned from the budget)")
    p.add_argument("--workers", type=int, help="local worker processes (default 1)")
    p.add_argument("--batch-size-min", type=int)
    p.add_argument("--batch-size-max", type=int)
    p.add_argument("--no-baselines", action="store_true", help="do not enqueue the reference configurations")
    p.add_argument("--create-only", action="store_true", help="create the study and exit (for workers to join)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _recipe_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("worker", help="join an existing study and run its trials")
    _common(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--seed", type=int, help="sampler seed base (default: the study's; each trial adds its number)")
    p.add_argument("--num-workers", type=int, help="data loader worker processes per trial")
    p.add_argument("--allow-import", action="append", default=[], metavar="PATH", help="code (pkg.module:function, "
                   "pkg.module:*) or data (imagefolder:PATH) the study may run here; or $AUTOBATCH_ALLOW_IMPORTS")
    p.add_argument("--config", type=Path, help="the study file: its model, dataset, step and recipe paths are allowed")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("probe", help="measure the memory model and the largest micro-batch under the cap")
    _workload_options(p)
    p.add_argument("--batch-size-max", type=int, default=256,
                   help="largest micro-batch to consider (default 256, as tune's search space)")
    p.add_argument("--json", action="store_true")
    _recipe_options(p, lr_rule=False)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("recommend", help="the recommended setting from stored trials (no training)")
    _common(p)
    p.add_argument("--max-memory", help="only settings whose predicted peak fits, e.g. 4GiB")
    p.add_argument("--max-epoch-time", help="only settings whose predicted epoch time is under this, e.g. 30s")
    p.add_argument("--min-accuracy", type=float, help="only settings predicted at least this accurate (0..1)")
    p.add_argument("--priority", choices=PRIORITIES, default="balanced")
    p.add_argument("--format", choices=FORMATS, help=(
        "json: the whole recommendation; toml: the setting and its [recipe]; hf: transformers "
        "TrainingArguments keywords (JSON); lightning: lightning.Trainer keywords, DataLoader batch size, "
        "optimizer and scheduler (JSON)"))
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("report", help="plots, a CSV and a summary of a study's trials")
    _common(p)
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder (default ./report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("dashboard", help="optuna-dashboard on the study storage")
    _common(p, study=False)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; the dashboard has no authentication)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)
    for command_parser in (parser, *sub.choices.values()):  # before or after the command
        command_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                    help="show the full traceback of a user error (or set AUTOBATCH_DEBUG=1)")
    return parser


def _print_event(run, event) -> None:  # type: ignore[no-untyped-def]
    """Progress: each event's line on stderr."""
    from .tuning import event_line

    line = event_line(event)
    if line is not None:
        _say(line)


def _tune_settings(args: argparse.Namespace):
    from .search import build_settings
    from .units import parse_bytes, parse_duration

    space = {k: v for k, v in (("batch_size_min", args.batch_size_min),
                               ("batch_size_max", args.batch_size_max),
                               ("base_lr", args.base_lr), ("scaling_rule", args.scaling_rule)) if v is not None}
    overrides = {
        "model": args.model, "dataset": args.dataset, "data_dir": args.data_dir,
        "budget_s": parse_duration(args.budget) if args.budget is not None else None,
        "n_trials": args.n_trials,
        "max_memory_bytes": parse_bytes(args.max_memory) if args.max_memory is not None else None,
        "storage": args.storage, "study_name": args.study_name, "seed": args.seed,
        "device": args.device, "pruner": args.pruner, "epochs": args.epochs,
        "workers": args.workers, "baselines": False if args.no_baselines else None,
        "create_only": args.create_only or None, "space": space, "recipe": _recipe_overrides(args),
        "step": args.step, "step_eval": args.step_eval, "num_workers": args.num_workers,
    }
    return build_settings(args.config, overrides)


def cmd_tune(args: argparse.Namespace) -> int:
    from .tuning import tune

    settings = _tune_settings(args)
    outcome = tune(settings, callbacks=[_print_event])
    if args.json:
        _print_json({**outcome.answer, "study_name": outcome.study_name, "storage": outcome.storage,
                     "counts": outcome.counts, "wall_time_s": outcome.wall_time_s})
        return 0
    print(render_answer(outcome.answer))
    c = outcome.counts
    print(f"trials: {c['complete']} completed, {c['pruned']} pruned, {c['fail']} failed, "
          f"{c['waiting']} queued; {outcome.wall_time_s:.0f}s")
    print(f"storage: {outcome.storage}  (study {outcome.study_name!r})")
    print(f"dashboard: autobatch dashboard --storage '{outcome.storage}'")
    return 0


def render_answer(answer: dict) -> str:
    from .units import format_bytes

    if not answer:
        return "no completed trial yet: give the study more budget or trials"

    def interval(key: str, fmt) -> str:
        lo_hi = answer.get(key)
        return f"  [{fmt(lo_hi[0])} .. {fmt(lo_hi[1])}]" if lo_hi else ""

    metric = answer.get("metric", "accuracy")
    value = answer.get("predicted_metric", answer.get("predicted_accuracy"))
    fraction = metric == "accuracy" or metric.endswith("_accuracy")
    epoch = answer.get("predicted_epoch_time_s")
    peak = answer.get("predicted_peak_bytes")
    lines = [
        f"recommended for {answer.get('study_name')}:",
        f"  batch size          {answer['batch_size']}",
        f"  accumulation steps  {answer['accumulation_steps']}  (effective batch {answer['effective_batch_size']})",
        f"  learning rate       {answer['learning_rate']:.4g}",
    ]
    if value is not None:
        label = "val loss" if metric == "val_loss" else f"val {answer.get('metric_name', metric)}"
        key = "metric_interval" if "predicted_metric" in answer else "accuracy_interval"
        lines.append(f"  {label:<20}{value:.4{'f' if fraction else 'g'}}"
                     f"{interval(key, lambda v: f'{v:.4f}' if fraction else f'{v:.4g}')}")
    if epoch is not None:
        lines.append(f"  epoch time          {epoch:.2f}s{interval('epoch_time_interval', lambda v: f'{v:.2f}s')}")
    if peak is not None:
        lines.append(f"  peak memory         {format_bytes(peak)}{interval('peak_bytes_interval', format_bytes)}")
    recipe = answer.get("recipe")
    if recipe:
        lines.append(f"  recipe              {recipe_line(recipe)}")
    if answer.get("optimizer_steps"):
        epochs = f" ({answer['epochs']:.3g} epochs)" if answer.get("epochs") else ""
        steps = answer["optimizer_steps"]
        lines.append(f"  tuned for           {steps} optimizer step{'s' if steps != 1 else ''}, "
                     f"{answer['train_samples']} samples{epochs}")
    lines.append(f"  why: {answer.get('rationale', '')}")
    return "\n".join(lines)


def recipe_line(recipe: dict) -> str:
    """The recipe in one line: what differs from nothing a user would have to guess."""
    opt = recipe["optimizer"]
    if opt == "sgd":
        opt += f"(momentum {recipe['momentum']:g}{', nesterov' if recipe['nesterov'] else ''}"
        opt += f", wd {recipe['weight_decay']:g})"
    elif opt in ("adam", "adamw"):
        opt += f"(betas {recipe['betas'][0]:g},{recipe['betas'][1]:g}, wd {recipe['weight_decay']:g})"
    parts = [opt, f"{recipe['schedule']} schedule, {recipe['warmup_fraction']:g} warm-up", recipe["precision"],
             recipe["loss"] + (f" (smoothing {recipe['label_smoothing']:g})" if recipe["label_smoothing"] else ""),
             f"metric {recipe['metric']}"]
    if recipe.get("grad_clip_norm"):
        parts.append(f"clip {recipe['grad_clip_norm']:g}")
    return ", ".join(parts)


def cmd_worker(args: argparse.Namespace) -> int:
    from .search import load_config
    from .storage import open_study
    from .tuning import TuneRun, allowed_imports, run_worker
    if not args.study_name:
        raise AutobatchError("worker needs --study-name (the study created by autobatch tune)")
    values = load_config(args.config) if args.config else {}  # the user's own study file: its paths are allowed
    named = [values.get(k) for k in ("model", "dataset", "step", "step_eval")] + list((values.get("recipe") or {}).values())
    given = list(args.allow_import) + [p for p in named if isinstance(p, str) and ":" in p]
    study = open_study(args.storage, args.study_name)  # writable; never creates the schema or a file
    n = run_worker(study, device_name=args.device, data_dir=args.data_dir, worker_seed=args.seed,
                   run=TuneRun([_print_event]), num_workers=args.num_workers, allowed=allowed_imports(given))
    _say(f"worker done: {n} trials run")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from . import memory
    from .recipe import TrainRecipe
    from .train import check_device, eval_runner, resolve_device, step_runner
    from .tuning import ProbeProgress, event_line, probe_summary
    from .units import parse_bytes
    from .workloads import build_model, check_model_name, load_workload

    model_name, dataset = args.model or "resnet18", args.dataset or "digits"
    check_model_name(model_name)
    if args.batch_size_max < 1:
        raise AutobatchError(f"--batch-size-max must be >= 1, got {args.batch_size_max}")
    recipe = TrainRecipe.from_dict(_recipe_overrides(args))
    device = check_device(recipe, resolve_device(args.device or "auto"))
    cap = parse_bytes(args.max_memory) if args.max_memory else memory.default_cap(device)
    workload = load_workload(dataset, data_dir=args.data_dir, seed=args.seed or 0)
    model = build_model(model_name, num_classes=workload.num_classes, input_shape=workload.input_shape,
                        vocab_size=workload.vocab_size)
    step, step_eval = args.step, getattr(args, "step_eval", None)
    result = memory.probe(step_runner(model, dataset=workload.train, device=device, recipe=recipe, step=step),
                          device=device, cap_bytes=cap, space_max=args.batch_size_max,
                          dataset_max=len(workload.train), eval_space_max=len(workload.val),
                          run_eval=eval_runner(model, dataset=workload.val, device=device, recipe=recipe,
                                               step=step, step_eval=step_eval),
                          on_point=None if args.json else lambda p, s: _say(event_line(ProbeProgress.of(p, s))))
    if args.json:
        _print_json({"model": model_name, "dataset": dataset, "recipe": recipe.to_dict(), **result.to_dict()})
        return 0
    source = "--max-memory" if args.max_memory else f"{device.type} memory available" if device.type == "cpu" \
        else f"{device.type} memory"
    print(probe_summary(result, f"{model_name} on {dataset} ({result.device}, {recipe.optimizer}, "
                                f"{recipe.precision}):", source))
    return 0


def _study_name(args: argparse.Namespace) -> str:
    if not args.study_name:
        raise AutobatchError(f"{args.command} needs --study-name")
    return args.study_name


def cmd_recommend(args: argparse.Namespace) -> int:
    from .recommender import recommend
    from .units import parse_duration

    rec = recommend(_study_name(args), args.storage, max_memory=args.max_memory,
                    max_epoch_time=parse_duration(args.max_epoch_time) if args.max_epoch_time else None,
                    min_accuracy=args.min_accuracy, priority=args.priority)
    fmt = args.format or ("json" if args.json else None)
    print(rec.export(fmt) if fmt else render_answer(rec.to_dict()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    files = write_report(_study_name(args), args.storage, args.out, say=_say)
    for path in files:
        print(path)
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
