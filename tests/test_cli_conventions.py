"""CLI conventions: every option's help shows its default and names its kind, --version, help
true to behaviour, ``studies`` and ``show`` on a real study, ``print(rec)`` a few lines."""

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from importlib.metadata import version

import optuna
import pytest

from autobatch import recommend
from autobatch.cli import build_parser
from tests.conftest import LEAN, REPO, run_cli

NAME = "conventions"


def _options():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, sub in [("", parser), *commands.items()]:
        for action in sub._actions:
            if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                                                 argparse._SubParsersAction)):
                yield command, action


def test_every_option_has_help_with_its_default():
    missing = [f"{cmd} {a.option_strings[0]}" for cmd, a in _options()
               if not a.help or ("(default: " not in a.help and "(required" not in a.help)]
    assert not missing, missing
    assert len(list(_options())) > 60  # all commands were walked


def test_metavars_name_the_kind():
    help_text = {cmd: build_parser()._subparsers._group_actions[0].choices[cmd].format_help()
                 for cmd in ("tune", "recommend", "dashboard", "worker")}
    for cmd, needle in (("tune", "--budget DURATION"), ("tune", "--max-memory SIZE"), ("tune", "--storage URL"),
                        ("tune", "--n-trials N"), ("tune", "--seed N"), ("recommend", "--max-epoch-time DURATION"),
                        ("recommend", "--max-memory SIZE"), ("dashboard", "--port N"), ("worker", "--study-name NAME")):
        assert needle in help_text[cmd], (cmd, needle)


def test_version_and_help_true_to_behaviour(tmp_path):
    done = run_cli("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"autobatch {version('autobatch')}"
    tune_help = run_cli("tune", "--help", cwd=tmp_path).stdout
    assert "default: MODEL-DATASET" in tune_help.replace("\n", " ").replace("  ", " ")
    for command in ("recommend", "report", "worker", "show"):
        text = run_cli(command, "--help", cwd=tmp_path).stdout
        assert "MODEL-DATASET" not in text and "(default: the storage's only study" in text, command
        missing = run_cli(command, "--storage", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
        assert missing.returncode == 2 and "no studies in" in missing.stderr, (command, missing.stderr)
        assert missing.stderr.count("\n") == 1 and not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("command", ["recommend", "show", "report"])
def test_without_study_name_the_only_study_is_read_and_several_are_named(study_url, tmp_path, command):
    extra = ("--out", str(tmp_path / "out")) if command == "report" else ()
    several = run_cli(command, "--storage", study_url, *extra, cwd=tmp_path)
    assert several.returncode == 2, several.stderr
    assert f"{command} needs --study-name" in several.stderr and "2 studies (conventions, plain-optuna)" in several.stderr
    assert several.stderr.count("\n") == 1, several.stderr
    one = tmp_path / "one.db"
    with sqlite3.connect(study_url.removeprefix("sqlite:///")) as source, sqlite3.connect(one) as copy:
        source.backup(copy)  # the file and its write-ahead log
    optuna.delete_study(study_name="plain-optuna", storage=f"sqlite:///{one}")
    done = run_cli(command, "--storage", f"sqlite:///{one}", *extra, cwd=tmp_path)
    named = run_cli(command, "--storage", f"sqlite:///{one}", "--study-name", NAME, *extra, cwd=tmp_path)
    assert done.returncode == 0 and named.returncode == 0, done.stderr + named.stderr
    assert f"reading study {NAME!r}, the only one in sqlite:///{one}" in done.stderr
    assert done.stdout == named.stdout


@pytest.fixture(scope="module")
def study_url(tmp_path_factory):
    where = tmp_path_factory.mktemp("conventions")
    url = f"sqlite:///{where / 'studies.db'}"
    done = run_cli("tune", "--model", "small_cnn", "--dataset", "digits", "--epochs", "0.5", "--device", "cpu", *LEAN,
                   "--n-trials", "6", "--seed", "1", "--storage", url, "--study-name", NAME, cwd=where)
    assert done.returncode == 0, done.stderr
    optuna.create_study(storage=url, study_name="plain-optuna").optimize(lambda t: t.suggest_float("x", 0, 1),
                                                                         n_trials=2)
    TUNE_STDERR.append(done.stderr)
    return url


TUNE_STDERR: list = []


def test_progress_off_a_terminal_is_plain_lines_inside_each_trial(study_url):
    """Not a terminal: each trial's checkpoints before its last as lines (samples seen of those
    planned, the metric, time left), then the trial's own line; no terminal control codes."""
    stderr = TUNE_STDERR[0]
    inside = re.findall(r"^  trial (\d+): (\d+)/(\d+) samples \(\d+%\), acc 0\.\d{4}, \d+s left$", stderr, re.M)
    assert len(inside) >= 3, stderr[-3000:]
    number, seen, planned = inside[0]
    assert int(seen) < int(planned)
    assert stderr.index(f"  trial {number}: {seen}/") < stderr.index(f"\ntrial {number}: b=")
    assert "\x1b[" not in stderr


def test_progress_on_a_terminal_draws_rich_bars(tmp_path):
    """On a terminal (a pseudo-terminal made by script(1)): rich bars for the trial in flight
    (samples seen / planned, metric, time left) and the study (trials done / planned, best)."""
    script = shutil.which("script")
    assert script, "script(1) from util-linux is needed for the terminal test"
    log = tmp_path / "typescript"
    command = (f"{sys.executable} -m autobatch tune --model small_cnn --dataset digits --epochs 0.5 --device cpu "
               f"--n-trials 2 {' '.join(LEAN)} --storage sqlite:///{tmp_path / 's.db'} --study-name tty")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "120", "TERM": "xterm"}
    env.pop("AUTOBATCH_STORAGE", None)
    done = subprocess.run([script, "-qfec", command, str(log)], cwd=tmp_path, env=env, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", log.read_text(errors="replace"))
    assert re.search(r"trial 0 \(b=\d+ x\d+\).*\d+/\d+ acc 0\.\d{4}, \d+s left", screen), screen[-3000:]
    assert re.search(r"trials .* 1/2\s+best 0\.\d+ \(#\d\)", screen), screen[-3000:]
    assert "trial 1: b=" in screen and ("recommended for tty" in screen or "best trial of tty" in screen)


def test_studies_lists_trials_by_state_and_the_answer(study_url, tmp_path):
    done = run_cli("studies", "--storage", study_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name=NAME, storage=study_url)
    answer = study.user_attrs["recommendation"]
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith(NAME))
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    assert row.split()[1] == str(complete)
    assert f"{answer['batch_size']} x {answer['accumulation_steps']}, lr {answer['learning_rate']:.3g}" in row
    assert "plain-optuna (not autobatch)" in done.stdout
    as_json = json.loads(run_cli("studies", "--storage", study_url, "--json", cwd=tmp_path).stdout)
    assert [s["name"] for s in as_json] == ["conventions", "plain-optuna"]
    assert as_json[0]["counts"]["complete"] == complete and as_json[0]["answer"]["batch_size"] == answer["batch_size"]
    empty = run_cli("studies", "--storage", f"sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path)
    assert empty.returncode == 2 and "no studies in" in empty.stderr and not (tmp_path / "none.db").exists()


def test_show_prints_the_answer_and_the_best_trials(study_url, tmp_path):
    done = run_cli("show", "--storage", study_url, "--study-name", NAME, "--top", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name=NAME, storage=study_url)
    assert done.stdout.startswith(f"recommended for {NAME}")
    assert "best 2 completed trials" in done.stdout
    best = study.best_trial
    assert any(line.split()[:1] == [f"#{best.number}"] and f"{best.value:.1%}" in line
               for line in done.stdout.splitlines())


def test_print_recommendation_is_a_few_lines_and_repr_is_bounded(study_url, tmp_path):
    rec = recommend(NAME, storage=study_url)
    text = str(rec)
    lines = text.splitlines()
    assert 4 <= len(lines) <= 11, text  # 7 lines, plus critical batch, verification, confidence, BatchNorm
    assert lines[0].startswith(f"recommended for {NAME}")
    assert f"micro-batch {rec.batch_size} x {rec.accumulation_steps}" in text
    assert f"{rec.predicted_metric:.1%}" in text  # accuracy in percent, as the rationale writes it
    assert rec.rationale in text
    assert len(repr(rec)) < 400 and f"batch_size={rec.batch_size}" in repr(rec)
    done = run_cli("recommend", "--storage", study_url, "--study-name", NAME, cwd=tmp_path)
    assert done.stdout.strip() == text
    import dataclasses

    stated = dataclasses.replace(rec, critical_batch=180.0, critical_batch_interval=(90.0, None),
                                 critical_batch_source="3 trials' end-of-training estimate")
    line = next(line for line in str(stated).splitlines() if line.strip().startswith("critical"))
    assert "≈ 180 [90, more]" in line and "3 trials'" in line and "little speed-up per sample" in line


def test_balanced_rationale_never_names_one_setting_as_both_ends():
    import pandas as pd

    from autobatch.recommender._choice import rationale

    cands = pd.DataFrame({"batch_size": [16, 64], "accumulation_steps": [1, 2], "learning_rate": [0.03, 0.1],
                          "accuracy": [0.823, 0.815], "accuracy_lo": [0.801, 0.79], "epoch_time_s": [1.0, 0.5]})
    one = rationale("balanced", cands, {"speed": 0, "accuracy": 0, "balanced": 0}, {"feasible": 2})
    assert one.count("batch 16 x 1") == 1 and "no trade-off" in one and "82.3%" in one
    two = rationale("balanced", cands, {"speed": 1, "accuracy": 0, "balanced": 1}, {"feasible": 2})
    assert "batch 64 x 2 accumulation, lr 0.1: 81.5%, pessimistic 79.0%, 0.5 s" in two
    assert "batch 16 x 1 accumulation, lr 0.03: 82.3%, pessimistic 80.1%" in two
    assert "compared at their intervals' pessimistic ends" in two  # what the picks compared
    assert "1 percentage point" in two  # the tolerance in the units the accuracies are shown in


def test_a_study_made_with_log2_parameters_resumes_with_them(tmp_path, sqlite_url):
    """A study made before 0.2 searched the exponents: it goes on searching them (the sampler
    sees one encoding per study), and every reader takes both."""
    from autobatch import records as R

    args = ("--model", "small_cnn", "--dataset", "digits", "--epochs", "0.25", "--device", "cpu", *LEAN,
            "--storage", sqlite_url, "--study-name", "log2")
    made = run_cli("tune", *args, "--n-trials", "2", "--create-only", "--no-baselines", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    study = optuna.load_study(study_name="log2", storage=sqlite_url)
    dists = {R.PARAM_BATCH_LOG2: optuna.distributions.IntDistribution(3, 8),
             R.PARAM_LR_MULTIPLIER: optuna.distributions.FloatDistribution(0.1, 10.0, log=True),
             R.PARAM_ACCUM_LOG2: optuna.distributions.IntDistribution(0, 3)}
    study.add_trial(optuna.trial.create_trial(
        params={R.PARAM_BATCH_LOG2: 5, R.PARAM_LR_MULTIPLIER: 1.0, R.PARAM_ACCUM_LOG2: 1}, distributions=dists,
        value=0.5, user_attrs={R.BATCH_SIZE: 32, R.ACCUMULATION_STEPS: 2, R.EFFECTIVE_BATCH_SIZE: 64,
                               R.LEARNING_RATE: 0.025, R.STOP_REASON: R.STOP_COMPLETED}))
    resumed = run_cli("tune", *args, "--n-trials", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    trials = optuna.load_study(study_name="log2", storage=sqlite_url).trials
    assert len(trials) == 2 and all(set(t.params) == set(dists) for t in trials)
    new = trials[1]
    assert new.user_attrs[R.BATCH_SIZE] == 2 ** new.params[R.PARAM_BATCH_LOG2]
    assert R.batch_and_accumulation(new.params) == (new.user_attrs[R.BATCH_SIZE], new.user_attrs[R.ACCUMULATION_STEPS])
    shown = run_cli("show", "--storage", sqlite_url, "--study-name", "log2", cwd=tmp_path)
    assert shown.returncode == 0 and "#0" in shown.stdout, shown.stderr
