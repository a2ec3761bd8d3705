"""Option declarations shared by the commands, each with its unit, its kind (metavar) and its
default in the help.

Defaults are written into the help text ("(default: ...)") rather than left to argparse's
``ArgumentDefaultsHelpFormatter``: most of autobatch's defaults are decided after parsing (the
study file's value, the plan made from the budget, the recipe's optimizer, the machine), so the
parser's own default is ``None`` ("not given") and the formatter would print ``(default:
None)``. ``tests/test_cli.py`` checks that every option's help shows its default.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, NoReturn

from ..errors import AutobatchError
from ..units import parse_bytes, parse_duration


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and values that start with a minus sign.

    A mistake on the command line is one line on stderr and exit 2, the message naming the
    option and the fix (argparse's own ``error`` prints the whole usage first). A value such as
    ``-3GB`` or ``-5m`` is read as the option's value, so that the option refuses it by name
    (argparse takes only plain negative numbers, ``-1``, as values, and anything else that starts
    with ``-`` as an unknown option, "expected one argument")."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse's own test for "a negative number, not an option" (used by _parse_optional):
        # widened to anything that starts with -DIGIT or -.DIGIT. No option of ours looks so.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"autobatch: error: {message} (see {self.prog} --help)\n")


def natural(text: str) -> int:
    """A whole number 0 or more (a seed, a count of processes); anything else is argparse's
    one-line error naming the option."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def duration(text: str) -> float:
    """An option's duration (``90s``, ``10m``, ``1h30m``) in seconds; a bad or non-positive one
    is argparse's one-line error naming the option."""
    try:
        return parse_duration(text)
    except AutobatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def size(text: str) -> int:
    """An option's size (``512MiB``, ``8GiB``) in bytes; a bad or non-positive one is
    argparse's one-line error naming the option."""
    try:
        return parse_bytes(text)
    except AutobatchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL", help=(
        "study storage: sqlite:///PATH or postgresql://USER@HOST/DB "
        "(default: $AUTOBATCH_STORAGE, else sqlite:///autobatch-studies/autobatch.db)"))


def study_options(p: argparse.ArgumentParser, *, required_name: bool) -> None:
    """``--storage`` and ``--study-name``; commands but ``tune`` default to the storage's only study."""
    storage_option(p)
    if required_name:
        p.add_argument("--study-name", metavar="NAME", help=(
            "the study to read (default: the storage's only study; see autobatch studies)"))
    else:
        p.add_argument("--study-name", metavar="NAME",
                       help="study to create or resume (default: MODEL-DATASET, e.g. resnet18-digits)")


def workload_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME", help=(
        "torchvision model name, small_cnn, mlp, cnn1d, gru, or pkg.module:function (default: resnet18)"))
    p.add_argument("--dataset", metavar="NAME", help=(
        "digits | mnist1d | wine | breast_cancer | synthetic[:NxCxHxW] | cifar10 | imagefolder:PATH | "
        "pkg.module:function (default: digits)"))
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="where cifar10 lives (default: ./data)")
    p.add_argument("--step", metavar="FUNCTION", help=(
        "pkg.module:function called as step(model, batch) -> loss, replacing the batch conventions' "
        "forward and loss in the probe, throughput and trials (default: the conventions')"))
    p.add_argument("--step-eval", metavar="FUNCTION", help=(
        "pkg.module:function called as evaluate(model, batches) -> metric, higher is better; with --step "
        "(default: the step's validation loss)"))
    p.add_argument("--num-workers", type=natural, metavar="N",
                   help="data loader worker processes per trial (default: what fits this machine)")
    p.add_argument("--max-memory", type=size, metavar="SIZE", help=(
        "memory cap to tune for, e.g. 512MiB, 8GiB, 1.5GB (default: CUDA memory less 10%% or at least "
        "512MiB; on CPU the memory available less a margin)"))
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where trials train (default: auto, CUDA when available)")
    p.add_argument("--seed", type=natural, metavar="N", help=(
        "seed of the sampler, the data split and each trial's initial weights (default: 0)"))


def parse_betas(text: str) -> Any:
    """``B1,B2`` as two floats; anything else is passed on as given, for the recipe to refuse in
    one line."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        return text


# Recipe flags: (flag, TrainRecipe field, argparse keywords). Unset flags keep the study file's
# value, else the default; the recipe checks every value (one line naming the option and the fix).
RECIPE_FLAGS = (
    ("--optimizer", "optimizer", dict(metavar="NAME", help=(
        "sgd | adam | adamw | pkg.module:function called as function(params, lr=...) "
        "(default: sgd, Nesterov momentum 0.9, weight decay 5e-4)"))),
    ("--momentum", "momentum", dict(type=float, metavar="X", help="SGD momentum (default: 0.9)")),
    ("--nesterov", "nesterov", dict(action=argparse.BooleanOptionalAction, default=None,
                                    help="SGD Nesterov momentum (default: on)")),
    ("--weight-decay", "weight_decay", dict(type=float, metavar="X", help=(
        "weight decay, decoupled for adamw (default: 5e-4 sgd, 0 adam, 0.01 adamw)"))),
    ("--betas", "betas", dict(type=parse_betas, metavar="B1,B2", help="Adam/AdamW betas (default: 0.9,0.999)")),
    ("--schedule", "schedule", dict(choices=("cosine", "constant", "linear", "onecycle"), help=(
        "lr schedule per optimizer step after a linear warm-up; onecycle is torch's OneCycleLR "
        "(default: cosine to zero)"))),
    ("--warmup", "warmup_fraction", dict(type=float, metavar="FRACTION", help=(
        "fraction of the optimizer steps spent warming up; onecycle: its rising phase (default: 0.05)"))),
    ("--precision", "precision", dict(choices=("fp32", "bf16", "fp16"), help=(
        "bf16: autocast (CPU and CUDA); fp16: autocast + GradScaler (CUDA only); the memory probe runs "
        "in it too (default: fp32)"))),
    ("--loss", "loss", dict(metavar="NAME", help=(
        "cross_entropy | bce (multi-label) | mse (regression) | pkg.module:function(outputs, targets) "
        "(default: cross_entropy)"))),
    ("--label-smoothing", "label_smoothing", dict(type=float, metavar="X",
                                                  help="cross-entropy label smoothing (default: 0)")),
    ("--metric", "metric", dict(metavar="NAME", help=(
        "what the study optimises: accuracy | top5_accuracy (any topK_accuracy) | val_loss | mae | rmse | "
        "pkg.module:function(outputs, targets) returning the batch mean (default: accuracy for "
        "cross_entropy, rmse for mse, val_loss otherwise)"))),
    ("--metric-direction", "metric_direction", dict(choices=("maximize", "minimize"), help=(
        "for a pkg.module:function metric; built-in metrics know their own (default: maximize)"))),
    ("--grad-clip", "grad_clip_norm", dict(type=float, metavar="MAX_NORM", help=(
        "clip the gradients' global L2 norm to this (default: no clipping)"))),
)


def recipe_options(p: argparse.ArgumentParser, *, lr_rule: bool = True) -> None:
    group = p.add_argument_group("training recipe (also a [recipe] table in the study file)")
    for flag, _, kwargs in RECIPE_FLAGS:
        group.add_argument(flag, **kwargs)
    if not lr_rule:
        return
    group.add_argument("--base-lr", type=float, metavar="LR", help=(
        "learning rate at effective batch 256 (default: 0.1 sgd, 1e-3 adam/adamw)"))
    group.add_argument("--scaling-rule", choices=("linear", "sqrt", "none"), help=(
        "how the lr scales with the effective batch (default: linear for sgd, sqrt for adam/adamw)"))


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe flags given, as ``TrainRecipe`` fields."""
    return {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in RECIPE_FLAGS
            if getattr(args, flag[2:].replace("-", "_")) is not None}


def debug_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of a user error, or set AUTOBATCH_DEBUG=1 (default: off)")


def json_option(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as JSON, and progress as plain lines (default: off)")
