"""Any model and data a user brings, from the CLI and from Python: end to end, and the user's
errors as one line with exit 2 (the traceback only with --debug)."""

import multiprocessing
import subprocess

import optuna
import pytest
import torch
from optuna.trial import TrialState

import autobatch
from autobatch import records as R
from autobatch.errors import AutobatchError
from tests import userland
from tests.conftest import LEAN, run_cli

QUICK = ("--device", "cpu", "--epochs", "1", "--num-workers", "0", *LEAN)


def _completed(url, name):
    study = optuna.load_study(study_name=name, storage=url)
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


def _one_line(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert lines[-1].startswith("autobatch: error:") and "Traceback" not in proc.stderr, proc.stderr
    assert not any(line.startswith("autobatch: error:") for line in lines[:-1])
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


def test_a_token_sequence_classifier_with_an_embedding_tunes_end_to_end(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "gru", "--dataset", "tests.userland:tokens_dataset", *QUICK,
                   "--n-trials", "3", "--batch-size-max", "64", "--storage", sqlite_url, "--study-name", "tok",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert len(_completed(sqlite_url, "tok")) == 3


def test_a_1d_cnn_on_mnist1d_tunes_end_to_end(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "cnn1d", "--dataset", "mnist1d", "--device", "cpu", "--epochs", "6", *LEAN,
                   "--n-trials", "2", "--batch-size-min", "32", "--storage", sqlite_url, "--study-name", "m1d",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    done = _completed(sqlite_url, "m1d")
    assert len(done) == 2 and max(t.value for t in done) > 0.3  # six epochs: far above chance (0.1)


def test_hugging_face_samples_and_own_loss_tune(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "tests.userland:hf_style", "--dataset", "tests.userland:hf_dataset",
                   *QUICK, "--n-trials", "2", "--storage", sqlite_url, "--study-name", "hf", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(_completed(sqlite_url, "hf")) == 2


def test_items_of_numpy_arrays_tune_as_the_default_collate_batches_them(tmp_path, sqlite_url):
    """float64 NumPy inputs and numpy int64 labels per item (before: refused at load, "inputs must
    be tensors ..., got ndarray"): trained as float32, said once."""
    proc = run_cli("tune", "--model", "mlp", "--dataset", "tests.userland:numpy_items_dataset", *QUICK,
                   "--n-trials", "1", "--storage", sqlite_url, "--study-name", "np", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("float64 inputs are trained as float32") == 1
    assert len(_completed(sqlite_url, "np")) == 1


def test_a_step_hook_with_its_evaluation_function_tunes(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "tests.userland:linear", "--dataset", "tests.userland:blobs_dataset",
                   "--step", "tests.userland:contrastive_step", "--step-eval", "tests.userland:step_accuracy",
                   *QUICK, "--n-trials", "2", "--storage", sqlite_url, "--study-name", "hook", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert all(0 < t.value <= 1 for t in _completed(sqlite_url, "hook"))


def test_the_users_errors_are_one_line_with_exit_2_and_a_traceback_only_when_asked(tmp_path, sqlite_url):
    args = ("tune", "--dataset", "tests.userland:blobs_dataset", *QUICK, "--n-trials", "2",
            "--storage", sqlite_url)
    proc = run_cli(*args, "--model", "tests.userland:broken_forward", cwd=tmp_path)  # the real CLI
    _one_line(proc, "forward of BrokenForward", "raised ValueError: shapes do not match in my_layer")
    debug = run_cli(*args, "--model", "tests.userland:broken_forward", "--debug", cwd=tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr and "in forward" in debug.stderr


def test_a_micro_batch_the_model_refuses_bounds_the_study_which_goes_on(tmp_path, sqlite_url):
    # tests.userland:size_limited raises above 24 samples, as a custom kernel's limit would
    proc = run_cli("tune", "--model", "tests.userland:size_limited", "--dataset", "tests.userland:blobs_dataset",
                   *QUICK, "--n-trials", "6", "--seed", "0", "--storage", sqlite_url, "--study-name", "limited",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    told = [line for line in proc.stderr.splitlines() if "cannot train this model" in line]
    assert len(told) == 1, proc.stderr
    assert told[0].startswith("micro-batch ") and told[0].endswith(
        "(forward of SizeLimited raised RuntimeError: batch too big for my custom kernel (> 24)); "
        "larger micro-batches are not tried")
    assert "kernel.cu" not in proc.stderr and "out of memory" not in proc.stderr
    study = optuna.load_study(study_name="limited", storage=sqlite_url)
    estimate = study.user_attrs[R.STUDY_MEMORY_MODEL]
    refused = estimate["refused_batch_size"]
    assert 24 < refused and estimate["max_batch_size"] <= 24
    assert _completed(sqlite_url, "limited")
    over = [t for t in study.trials if t.user_attrs[R.BATCH_SIZE] >= refused]
    assert over  # the sampler proposed such sizes: each is infeasible with the reason, never trained
    for t in over:
        assert t.user_attrs[R.STOP_REASON] == R.STOP_INFEASIBLE and t.user_attrs[R.SAMPLES_SEEN] == 0
        assert "batch too big for my custom kernel" in t.user_attrs[R.STOP_DETAIL]
    shown = run_cli("probe", "--model", "tests.userland:size_limited", "--dataset", "tests.userland:blobs_dataset",
                    "--device", "cpu", cwd=tmp_path)
    assert shown.returncode == 0 and f"  refused          micro-batch {refused} cannot train" in shown.stdout


def test_micro_batches_too_small_for_the_model_are_a_lower_bound_and_the_study_goes_on(tmp_path, sqlite_url):
    # tests.userland:min_batch4 raises below 4 samples: the probe's first size (2) is too small
    # for it, a lower bound the probe moves up past, as BatchNorm at 1 is left to the trials
    proc = run_cli("tune", "--model", "tests.userland:min_batch4", "--dataset", "tests.userland:blobs_dataset",
                   *QUICK, "--n-trials", "3", "--seed", "0", "--batch-size-min", "2", "--batch-size-max", "8",
                   "--storage", sqlite_url, "--study-name", "least", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "training step at 2: too small for the model" in proc.stderr
    told = [line for line in proc.stderr.splitlines() if "cannot train this model" in line]
    assert told == ["micro-batch 2 cannot train this model (forward of MinBatch raised RuntimeError: need at least "
                    "4 samples per batch, got 2); trials at it are recorded infeasible"], proc.stderr
    study = optuna.load_study(study_name="least", storage=sqlite_url)
    estimate = study.user_attrs[R.STUDY_MEMORY_MODEL]
    assert estimate["sizes"][:2] == [2, 4] and estimate["points"][0]["too_small"]
    assert estimate["refused_batch_size"] is None and estimate["max_batch_size"] >= 8  # not an upper bound
    assert len(_completed(sqlite_url, "least")) == 3
    for t in study.trials:  # any trial at 2 (the sampler may propose it) is infeasible, never a failure
        if t.user_attrs[R.BATCH_SIZE] < 4:
            assert t.user_attrs[R.STOP_REASON] == R.STOP_INFEASIBLE, t.user_attrs


def _main(capsys, *argv):
    from autobatch.cli import main

    code = main(list(argv))
    return subprocess.CompletedProcess(argv, code, *capsys.readouterr())


def test_factory_and_label_errors_and_autobatch_debug(tmp_path, sqlite_url, capsys, monkeypatch):
    args = ("tune", "--dataset", "tests.userland:blobs_dataset", *QUICK, "--n-trials", "2",
            "--storage", sqlite_url)
    _one_line(_main(capsys, *args, "--model", "tests.userland:broken_factory"),
              "model factory tests.userland:broken_factory raised RuntimeError: cannot build")
    _one_line(_main(capsys, *args, "--model", "mlp", "--dataset", "tests.userland:bad_labels_dataset"),
              "largest label 11")
    _one_line(_main(capsys, *args, "--model", "tests.userland:no_parameters"), "no trainable parameters")
    monkeypatch.setenv("AUTOBATCH_DEBUG", "1")
    shown = _main(capsys, *args, "--model", "tests.userland:broken_factory")
    assert shown.returncode == 2 and "Traceback" in shown.stderr and "weights file missing" in shown.stderr


def test_a_study_where_every_trial_fails_stops_with_the_users_line(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "tests.userland:linear", "--dataset", "tests.userland:blobs_dataset",
                   "--step", "tests.userland:contrastive_step", "--step-eval", "tests.userland:raising_eval",
                   *QUICK, "--n-trials", "2", "--storage", sqlite_url, "--study-name", "fails", cwd=tmp_path)
    _one_line(proc, "evaluation function tests.userland:raising_eval raised KeyError")
    study = optuna.load_study(study_name="fails", storage=sqlite_url)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2  # kept, not re-queued


def test_tune_in_python_on_objects_returns_the_recommendation(tmp_path):
    x, y = userland.blobs(320, shape=(2, 10))
    train, val = userland.split(x, y)

    class Net(torch.nn.Module):  # defined here, as in a notebook
        def __init__(self):
            super().__init__()
            self.conv, self.head = torch.nn.Conv1d(2, 4, 3), torch.nn.Linear(32, 3)

        def forward(self, signal):
            return self.head(self.conv(signal).relu().flatten(1)), signal  # (logits, features)

    url = f"sqlite:///{tmp_path / 'nb.db'}"
    rec = autobatch.tune(model=lambda: Net(), data=(train, val, 3), budget=None, n_trials=5, storage=url,
                         study_name="nb", device="cpu", space={"batch_size_max": 64}, progress=False,
                         verify_runs=0, noise_probe=False)
    assert isinstance(rec, autobatch.Recommendation)
    assert rec.batch_size in (8, 16, 32, 64) and rec.learning_rate > 0
    assert len(_completed(url, "nb")) >= 4
    assert multiprocessing.active_children() == []
    with pytest.raises(AutobatchError, match="exist only in this process"):
        autobatch.tune(model=lambda: Net(), data=(train, val, 3), n_trials=2, storage=url, workers=2)
