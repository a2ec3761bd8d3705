"""Headline benchmark: autobatch against a grid of distinct settings and the baselines people use,
at equal total compute, every answer re-trained with fresh seeds on a split no tuner saw.

    python scripts/bench_tuning [--quick | --smoke] [--out DIR]
    python scripts/benchmark.py [--quick]      # all sections, writes BENCHMARKS.md

Per task (``tasks``): the grid of distinct configurations on the pool, scored on the test split
(``ground_truth``, ``data``); per tuner seed, autobatch (``autobatch_run``) and the searches
(``methods``) on their own tuning split, stopped at fractions of the grid's CPU seconds; every
answer and the grid's best re-trained with fresh seeds; the longer re-training and time to
accuracy (``long_runs``); the peers' batch-size finders (``peers``); tables, goals and plots
(``summary``, ``render``). The pure rules (seeds, distinct grid, offsets, budgets, ties) live in
``protocol``. ``run`` is what ``scripts/benchmark.py`` calls.
"""

from __future__ import annotations

import json
import pathlib
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "scripts"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import optuna  # noqa: E402
import torch  # noqa: E402
from _bench_common import load_average  # noqa: E402

from . import data  # noqa: E402
from .autobatch_run import autobatch_run  # noqa: E402
from .ground_truth import GroundTruth  # noqa: E402
from .long_runs import longer_training, time_to_accuracy  # noqa: E402
from .methods import SEARCH_METHODS, Context, fixed_answers, rule_configs  # noqa: E402
from .peers import run_peers  # noqa: E402
from .render import plot, plot_tta, render, to_json  # noqa: E402
from .tasks import AUTOBATCH, B128, FOLK, LARGEST, PAPER, PLOT, PLOT_TTA, THREADS, Task, tasks  # noqa: E402


def run_task(task: Task, out_dir: pathlib.Path, mode: str) -> dict:
    def progress(message: str) -> None:
        print(f"  [{task.name}] {message}", file=sys.stderr, flush=True)

    scoring = data.scoring(task.dataset)
    tuner_train = len(data.tuning(task.dataset, task.seeds.tuners[0]).train)
    train_samples = max(1, round(task.epochs * tuner_train))  # as autobatch plans a trial
    truth = GroundTruth(task, scoring, train_samples, tuner_train)
    truth.run_grid(progress)
    budgets_s = tuple(f * truth.cpu_one_seed for f in task.budgets)

    answers = fixed_answers(task, tuner_train)
    studies = out_dir / "bench_tuning_studies"  # autobatch's SQLite files, kept for inspection
    studies.mkdir(parents=True, exist_ok=True)
    methods = {AUTOBATCH: autobatch_run, **SEARCH_METHODS}
    searches = {name: methods[name] for name in task.searches}
    for repeat, seed in enumerate(task.seeds.tuners):
        ctx = Context(task=task, repeat=repeat, tuner_seed=seed, budgets_s=budgets_s,
                      train_samples=train_samples, studies=studies, progress=progress,
                      grid_run_s=truth.cpu_one_seed / len(truth.configs))
        for method in searches.values():  # interleaved: machine load hits every method alike
            answers += method(ctx)
    for answer in answers:
        truth.fresh(answer.pick)
    progress(f"answers re-trained with fresh seeds ({truth.retrain_seconds:.0f}s so far)")

    last = max(task.budgets)
    first_pick = {a.method: a.pick for a in answers if a.repeat == 0 and a.budget in (last, None)}
    longer = None
    if task.seeds.long:
        longer = longer_training(truth, {"grid best": truth.best.config, **first_pick})
        progress(f"{longer['factor']}x re-training: Kendall tau {longer['kendall_tau']:.2f}")
    rules = rule_configs(task, tuner_train)
    tta_picks = {AUTOBATCH: first_pick[AUTOBATCH], **{k: rules[k] for k in (FOLK, B128, LARGEST, PAPER) if k in rules}}
    tta_seeds = task.seeds.long[:1]
    tta = time_to_accuracy(task, scoring, tta_picks, tta_seeds, progress) if task.tta_samples and tta_seeds else {}
    peers = run_peers(task, scoring, mode == "quick") if mode != "smoke" and task.peers else []
    return {"task": task, "mode": mode, "train_samples": train_samples, "truth": truth, "answers": answers,
            "budgets_s": budgets_s, "longer": longer, "tta": tta, "tta_seeds": tta_seeds, "peers": peers,
            "tuner_train": tuner_train, "pool": len(scoring.train), "test": len(scoring.val)}


def run(quick: bool, out_dir: pathlib.Path, *, mode: str = "") -> str:
    mode = mode or ("quick" if quick else "full")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    started_load = load_average()
    try:
        results = [run_task(task, out_dir, mode) for task in tasks(mode)]
    finally:
        torch.set_num_threads(threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench_tuning.json").write_text(json.dumps(to_json(results), indent=1, default=str))
    figures = (PLOT, PLOT_TTA) if mode != "smoke" else (out_dir / PLOT.name, out_dir / PLOT_TTA.name)
    plot(results, figures[0])
    plot_tta(results, figures[1])
    return render(results, mode, started_load, load_average())
