"""The real CLI, in subprocesses, as a user runs it."""

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from autobatch import records as R
from tests.conftest import LEAN, drop_study, run_cli

FAST = ("--model", "small_cnn", "--dataset", "digits", "--epochs", "0.5", "--device", "cpu", *LEAN)


def _one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("autobatch: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_tune_end_to_end_and_resume(tmp_path, sqlite_url):
    proc = run_cli("tune", *FAST, "--n-trials", "4", "--storage", sqlite_url, "--study-name", "e2e",
                   "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for field in ("batch_size", "learning_rate", "accumulation_steps", "effective_batch_size"):
        assert field in out
    assert "trial 3:" in proc.stderr and "memory:" in proc.stderr  # progress was shown

    study = optuna.load_study(study_name="e2e", storage=sqlite_url)  # vanilla Optuna reads it
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(study.trials) == 4 and len(finished) == 4
    labels = {t.user_attrs.get(R.BASELINE) for t in study.trials}
    assert {"folk-default-32", "largest-fit-linear-lr"} <= labels
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            a = t.user_attrs
            for key in (R.BATCH_SIZE, R.LEARNING_RATE, R.ACCUMULATION_STEPS, R.THROUGHPUT,
                        R.EPOCH_TIME_S, R.VAL_ACCURACY, R.CURVE, R.PREDICTED_PEAK_BYTES, R.STOP_REASON):
                assert a.get(key) is not None, key
            assert t.value == a[R.VAL_ACCURACY]
            assert sorted(t.intermediate_values) == study.user_attrs[R.STUDY_SPEC]["eval_points"]
    df = study.trials_dataframe()
    assert "user_attrs_throughput" in df.columns

    again = run_cli("tune", *FAST, "--n-trials", "6", "--storage", sqlite_url, "--study-name", "e2e", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming study 'e2e'" in again.stderr
    assert "recommended for e2e" in again.stdout
    trials = optuna.load_study(study_name="e2e", storage=sqlite_url).trials
    assert len(trials) == 6  # --n-trials is the study's total, not more
    # a resumed study moves on: its sampler does not replay the first run's proposals
    assert [t.params for t in trials[4:]] != [t.params for t in trials[2:4]]


def test_default_storage_is_embedded_sqlite_and_printed(tmp_path):
    proc = run_cli("tune", *FAST, "--n-trials", "2", "--no-baselines", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    db = tmp_path / "autobatch-studies" / "autobatch.db"
    assert db.exists() and str(db) in proc.stdout
    assert "autobatch dashboard" in proc.stdout
    assert optuna.load_study(study_name="small_cnn-digits", storage=f"sqlite:///{db}").trials


def test_ctrl_c_exits_130_and_study_resumes(tmp_path, sqlite_url):
    cmd = [sys.executable, "-m", "autobatch", "tune", *FAST, "--epochs", "3", "--n-trials", "50",
           "--storage", sqlite_url, "--study-name", "intr"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if line.startswith("trial 1:"):  # two trials finished
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "Traceback" not in rest and "resume" in rest
    study = optuna.load_study(study_name="intr", storage=sqlite_url)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) >= 2
    assert TrialState.RUNNING not in states
    interrupted = [t for t in study.trials if t.user_attrs.get(R.STOP_REASON) == "interrupted"]
    for t in interrupted:  # its configuration was queued again: nothing asked for is lost
        assert any(w.state == TrialState.WAITING and w.system_attrs.get("failed_trial") == t.number
                   for w in study.trials)
    resumed = run_cli("tune", *FAST, "--n-trials", "1", "--storage", sqlite_url, "--study-name", "intr",
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize("args,words", [
    (("--model", "resnet81"), ("unknown model", "resnet18")),
    (("--dataset", "digts"), ("unknown dataset", "digits")),
    (("--budget", "5 parsecs"), ("malformed duration",)),
    (("--budget", "0s"), ("must be positive",)),
    (("--n-trials", "0"), ("--n-trials",)),
    (("--model", "nosuchpkg.models:make"), ("cannot import",)),
    (("--model", "json:dumps"), ("model factory json:dumps raised TypeError",)),
    (("--model", "tests.test_workloads:_factory_wrong"), ("not a torch.nn.Module",)),
    (("--dataset", "json:dumps"), ("dataset",)),
    (("--dataset", "cifar10", "--data-dir", "."), ("cifar-10-batches-py",)),
    (("--storage", "sqlite:////proc/autobatch/x.db"), ("/proc/autobatch",)),
    (("--config", "no-such.toml"), ("not found",)),
    (("--pruner", "best"), ("unknown pruner",)),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    proc = run_cli("tune", "--model", "small_cnn", "--n-trials", "1", "--epochs", "0.1",
                   "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", *args, cwd=tmp_path)
    _one_error_line(proc, *words)


def test_unreachable_database_names_host_not_password(tmp_path):
    proc = run_cli("tune", "--model", "small_cnn", "--n-trials", "1",
                   "--storage", "postgresql://alice:s3cret@127.0.0.1:1/db", cwd=tmp_path)
    _one_error_line(proc, "127.0.0.1:1")
    assert "s3cret" not in proc.stderr + proc.stdout


def test_study_reused_with_another_setup_names_the_difference(tmp_path, sqlite_url):
    first = run_cli("tune", *FAST, "--n-trials", "1", "--no-baselines", "--storage", sqlite_url,
                    "--study-name", "same", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    other_model = run_cli("tune", *FAST[:1], "mlp", *FAST[2:], "--n-trials", "1", "--storage", sqlite_url,
                          "--study-name", "same", cwd=tmp_path)
    _one_error_line(other_model, "model", "small_cnn", "mlp", "--study-name")
    other_space = run_cli("tune", *FAST, "--n-trials", "1", "--batch-size-max", "64", "--storage",
                          sqlite_url, "--study-name", "same", cwd=tmp_path)
    _one_error_line(other_space, "batch_size_max")


def test_worker_on_missing_study(tmp_path, sqlite_url):
    proc = run_cli("worker", "--study-name", "ghost", "--storage", sqlite_url, cwd=tmp_path)
    _one_error_line(proc, "ghost")


def test_probe_prints_the_memory_model(tmp_path):
    proc = run_cli("probe", "--model", "small_cnn", "--max-memory", "64MiB", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["per_sample_bytes_at_boundary"] > 0 and out["max_batch_size"] > 0 and out["cap_bytes"] == 64 * 2**20
    assert out["form"] in ("affine", "two_regime", "quadratic", "piecewise") and len(out["sizes"]) <= 5
    assert out["boundary"] == min(256, out["max_batch_size"]) and out["boundary"] in out["sizes"]
    assert out["eval_model"] and out["eval_max_batch_size"] >= 1
    human = run_cli("probe", "--model", "small_cnn", "--batch-size-max", "64", cwd=tmp_path)
    assert "per sample" in human.stdout and "at micro-batch 64" in human.stdout
    # on CPU the default cap is the memory available to the process
    assert "(cpu memory available)" in human.stdout
    # no micro-batch larger than the training set (digits: 1438) is claimed
    assert "the whole training set (1438 samples) fits under" in human.stdout
    assert "training step at 2:" in human.stderr and "evaluation at" in human.stderr  # progress


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_ctrl_c_swallowed_by_a_callback_is_raised_again_at_the_next_check():
    """Python ignores a KeyboardInterrupt raised inside a weak-reference callback (it prints
    "Exception ignored"); the CLI's handler records it and the step and claim loops raise it."""
    import weakref

    from autobatch import interrupts

    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupts.install()
        interrupts.check()  # nothing pressed: no-op

        class Freed:
            pass

        obj = Freed()
        ref = weakref.ref(obj, lambda _: signal.raise_signal(signal.SIGINT))  # noqa: F841
        del obj  # the handler raises inside the callback: Python reports it and goes on
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupts._pressed.clear()


def test_a_ctrl_c_during_a_claim_is_held_back_until_the_claim_is_named():
    """``interrupts.deferred()`` records a SIGINT without raising it; ``check()`` raises it after
    (the worker hands the claimed trial back there); outside it Ctrl-C raises at once."""
    from autobatch import interrupts

    previous = signal.getsignal(signal.SIGINT)
    try:
        interrupts.install()
        with interrupts.deferred():
            signal.raise_signal(signal.SIGINT)  # recorded, not raised
            taken = "trial 7"
        assert taken == "trial 7"
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        interrupts._pressed.clear()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # outside: raised at once, as before
    finally:
        signal.signal(signal.SIGINT, previous)
        interrupts._pressed.clear()


# --- parsing: one line naming the option, exit 2; the verification and noise-probe switches ----

def _parse_error(capsys, *argv: str) -> str:
    from autobatch.cli import build_parser

    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(list(argv))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("autobatch: error: "), err  # no usage block
    return lines[0]


@pytest.mark.parametrize("argv,words", [
    (("tune", "--max-memory", "-3GB"), ("argument --max-memory", "'-3GB' must be positive")),
    (("tune", "--budget", "-5m"), ("argument --budget", "'-5m' must be positive")),
    (("tune", "--budget=-5m"), ("argument --budget", "must be positive")),
    (("tune", "--budget", "5 parsecs"), ("argument --budget", "malformed duration")),
    (("tune", "--budget"), ("argument --budget", "expected one argument")),
    (("tune", "--n-trials", "many"), ("argument --n-trials", "invalid int value")),
    (("tune", "--seed", "-1"), ("argument --seed", "must be 0 or more, got -1")),
    (("worker", "--study-name", "s", "--num-workers", "-2"), ("argument --num-workers", "must be 0 or more")),
    (("tune", "--verify-runs", "1", "--no-verify"), ("--no-verify", "not allowed with", "--verify-runs")),
    (("tune", "--bogus"), ("unrecognized arguments: --bogus", "--help)")),
    (("probe", "--max-memory", "-1GiB"), ("argument --max-memory", "must be positive")),
    (("recommend", "--study-name", "s", "--max-epoch-time", "-30s"), ("argument --max-epoch-time",)),
])
def test_a_bad_value_is_one_line_naming_the_option(capsys, argv, words):
    line = _parse_error(capsys, *argv)
    for word in words:
        assert word in line, line


def _settings(*argv: str):
    from autobatch.cli import _tune_settings, build_parser

    return _tune_settings(build_parser().parse_args(["tune", *argv]))


@pytest.mark.parametrize("argv,words", [
    (("--n-trials", "-1"), ("--n-trials must be at least 1, got -1",)),
    (("--study-name", ""), ("--study-name is empty",)),
    (("--study-name", "  "), ("--study-name is empty",)),
    (("--verify-runs", "6"), ("--verify-runs", "0 to 5", "6")),
    (("--verify-runs", "-1"), ("--verify-runs", "0 to 5", "-1")),
])
def test_a_bad_setting_is_refused_before_anything_runs(argv, words):
    from autobatch.errors import AutobatchError

    with pytest.raises(AutobatchError) as caught:
        _settings(*argv)
    for word in words:
        assert word in str(caught.value)


def test_verification_and_noise_probe_switches_reach_the_settings(tmp_path):
    assert _settings().verify_runs is None and _settings().noise_probe is True   # the plan's 1 or 2; probed
    assert _settings("--no-verify").verify_runs == 0
    assert _settings("--verify-runs", "3").verify_runs == 3
    assert _settings("--no-noise-probe").noise_probe is False
    study_file = tmp_path / "s.toml"
    study_file.write_text('model = "mlp"\nverify_runs = 2\nnoise_probe = false\n')
    from_file = _settings("--config", str(study_file))
    assert (from_file.verify_runs, from_file.noise_probe) == (2, False)
    assert _settings("--config", str(study_file), "--no-verify").verify_runs == 0    # the flag wins
    study_file.write_text('model = "mlp"\nnoise_probe = "no"\n')
    from autobatch.errors import AutobatchError

    with pytest.raises(AutobatchError, match="noise_probe = false"):
        _settings("--config", str(study_file))


def test_largest_micro_batch_never_exceeds_the_training_set():
    from autobatch.tuning._progress import largest_line

    assert largest_line(622883, 16 * 2**30, 1437) == "the whole training set (1437 samples) fits under 16.0 GiB as one micro-batch"
    assert largest_line(1437, 2**30, 1437).startswith("the whole training set (1437 samples) fits")
    assert largest_line(512, 2**30, 1437) == "largest micro-batch under 1.0 GiB: 512"
    assert largest_line(512, 2**30, None) == "largest micro-batch under 1.0 GiB: 512"


def test_an_unverified_answer_says_so_and_why(tmp_path):
    """--no-verify and --no-noise-probe: the answer says it was not verified, by the user's choice,
    and the critical batch was not measured; no probe, no re-training."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = run_cli("tune", "--model", "mlp", "--dataset", "digits", "--epochs", "0.3", "--device", "cpu",
                   "--n-trials", "4", "--no-verify", "--no-noise-probe", "--storage", url, "--study-name", "nv",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "verified     no: verification is off (--no-verify" in proc.stdout and "your choice" in proc.stdout
    assert "critical batch not measured: the gradient-noise probe is off" in proc.stderr
    assert "B_simple" not in proc.stderr                              # the probe did not run
    study = optuna.load_study(study_name="nv", storage=url)
    stored = study.user_attrs[R.STUDY_RECOMMENDATION]                  # the stored answer says it too
    assert not stored["verified_values"] and "your choice" in stored["verification_note"]
    assert study.user_attrs[R.STUDY_RECOMMENDATION_KEY] is None        # not the fit's answer: recommend fits
    assert R.STUDY_NOISE_SCALE not in study.user_attrs
    assert study.user_attrs[R.STUDY_SPEC]["verify_holdout"] == 0     # nothing held out for a run that never comes


def test_create_only_says_how_to_run_workers_and_the_printed_commands_run(postgres_url, unique_name, tmp_path):
    """``tune --create-only`` on PostgreSQL with a password: no "no completed trial yet" (nothing
    was meant to run), the worker command to run instead, with the study's --allow-import paths;
    the worker and dashboard commands run as printed (the password left out, read by the driver
    from $PGPASSWORD; the driver spelled as given), and the password is never printed."""
    import shlex

    password = "pw-Never-Printed"
    secret_url = postgres_url.replace("postgres@", f"postgres:{password}@", 1)  # trust auth accepts any
    code = ("--model", "tests.userland:linear", "--dataset", "tests.userland:blobs_dataset")
    try:
        made = run_cli("tune", *code, "--epochs", "0.5", *LEAN, "--n-trials", "2", "--no-baselines", "--create-only",
                       "--storage", secret_url, "--study-name", unique_name, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
        assert password not in made.stdout + made.stderr
        assert "no completed trial" not in made.stdout and f"study {unique_name!r} is ready" in made.stdout
        lines = made.stdout.splitlines()
        worker = next(line.strip() for line in lines if line.strip().startswith("autobatch worker"))
        dashboard = next(line for line in lines if line.startswith("dashboard: ")).removeprefix("dashboard: ")
        assert "--allow-import tests.userland:linear --allow-import tests.userland:blobs_dataset" in worker
        assert "$PGPASSWORD" in made.stdout                                    # where the password comes from
        assert "postgresql://postgres@" in dashboard and "psycopg2" not in dashboard  # as given, less the password
        env = {"PGPASSWORD": password}
        ran = run_cli(*shlex.split(worker)[1:], cwd=tmp_path, env=env)
        assert ran.returncode == 0 and "worker done: 2 trials run" in ran.stderr, ran.stderr
        storage = shlex.split(dashboard)[shlex.split(dashboard).index("--storage") + 1]
        listed = run_cli("studies", "--storage", storage, cwd=tmp_path, env=env)  # the dashboard's URL works
        assert listed.returncode == 0 and unique_name in listed.stdout, listed.stderr
    finally:
        drop_study(postgres_url, unique_name)


def test_printed_commands_never_hold_a_password(monkeypatch):
    from autobatch.search import dashboard_command, password_note, worker_command
    from autobatch.search import StudySpec

    url = "postgresql://bob:hunter2@db.example:5432/studies"
    monkeypatch.delenv("AUTOBATCH_STORAGE", raising=False)
    assert dashboard_command(url) == "autobatch dashboard --storage postgresql://bob@db.example:5432/studies"
    assert "$PGPASSWORD" in password_note(url) and "hunter2" not in password_note(url)
    spec = StudySpec(model="pkg.m:net", dataset="digits")
    assert worker_command("s", url, spec) == ("autobatch worker --study-name s --storage "
                                              "postgresql://bob@db.example:5432/studies --allow-import pkg.m:net")
    assert dashboard_command("sqlite:///x y.db") == "autobatch dashboard --storage 'sqlite:///x y.db'"
    assert password_note("sqlite:///x.db") is None
    monkeypatch.setenv("AUTOBATCH_STORAGE", url)              # the environment holds it: named, or implied
    assert dashboard_command(url) == 'autobatch dashboard --storage "$AUTOBATCH_STORAGE"'
    assert dashboard_command(None) == "autobatch dashboard" and password_note(None) is None


def test_the_best_trial_answer_names_the_metric_once():
    """A val_loss study's best-trial answer said "val val_loss" and "by measured validation
    accuracy"; it says "validation loss"."""
    from autobatch._cli.render import best_trial_answer
    from autobatch.recipe import metric_label

    answer = {"study_name": "s", "best_trial": 0, "batch_size": 32, "accumulation_steps": 1,
              "effective_batch_size": 32, "learning_rate": 0.01, "metric": "val_loss", "predicted_metric": 0.96}
    text = best_trial_answer(answer)
    assert "val val_loss" not in text and "  validation loss 0.96 (measured)" in text
    assert "  val accuracy 50.0% (measured)" in best_trial_answer({**answer, "metric": "accuracy",
                                                                      "predicted_metric": 0.5})
    assert [metric_label(m) for m in ("val_loss", "accuracy", "rmse", "pkg.m:f1")] == [
        "validation loss", "validation accuracy", "validation RMSE", "validation f1"]


def test_a_regression_study_with_mse_names_its_metric_in_the_answer(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "tests.userland:regression_model", "--dataset", "tests.userland:regression_dataset",
                   "--loss", "mse", "--epochs", "0.5", *LEAN, "--n-trials", "1", "--storage", sqlite_url, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "  val RMSE" in proc.stdout and "by measured validation RMSE" in proc.stdout, proc.stdout
    assert "accuracy" not in proc.stdout
