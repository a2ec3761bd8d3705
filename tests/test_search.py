"""The study's behaviour through the real CLI: memory-aware pruning, pruning on the samples-seen
axis, and the budget deadline."""

import time

import optuna
from optuna.trial import TrialState

from autobatch import records as R
from tests.conftest import LEAN, LEAN_SETTINGS, run_cli


def _trained(trials):
    return [t for t in trials if t.user_attrs.get(R.SAMPLES_SEEN, 0) > 0]


def test_memory_cap_is_respected_and_infeasible_trials_never_train(tmp_path, sqlite_url):
    cap = 2 * 2**20  # small_cnn on digits: ~0.13 MiB + ~28 KiB/sample -> micro-batch 64 fits, 128 does not
    proc = run_cli("tune", "--model", "small_cnn", "--epochs", "0.5", "--n-trials", "10", "--max-memory", "2MiB", *LEAN,
                   "--batch-size-min", "32", "--batch-size-max", "512", "--storage", sqlite_url,
                   "--study-name", "cap", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="cap", storage=sqlite_url)
    memory = study.user_attrs[R.STUDY_MEMORY_MODEL]
    assert memory["cap_bytes"] == cap and 64 <= memory["max_batch_size"] < 128

    over = [t for t in study.trials if t.user_attrs.get(R.STOP_REASON) == R.STOP_OVER_MEMORY]
    assert over, "the space holds micro-batches 128-512 that cannot fit: some trial must have proposed one"
    for t in over:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs[R.SAMPLES_SEEN] == 0 and not t.intermediate_values  # zero steps trained
        assert t.user_attrs[R.BATCH_SIZE] > 64 and t.user_attrs[R.PREDICTED_PEAK_BYTES] > cap
        assert t.constraints["memory"] > 0 and t.system_attrs["constraints"][0] > 0  # sampler + dashboard
        # refused by the prediction, or at and above the smallest size measured over the cap (the probe,
        # which starts at --batch-size-min 32, measures 128 before it has a fit)
        assert "predicted" in t.user_attrs[R.STOP_DETAIL] or (
            f"micro-batch {memory['too_big']} did not fit" in t.user_attrs[R.STOP_DETAIL])
    trained = _trained(study.trials)
    assert trained
    for t in trained:
        assert t.user_attrs[R.BATCH_SIZE] <= 64
        assert 0 < t.user_attrs[R.MEASURED_PEAK_BYTES] <= cap
        assert t.constraints["memory"] <= 0
    # the probe's prediction is close to what each trial measured (CPU accounting is exact)
    for t in trained:
        measured, predicted = t.user_attrs[R.MEASURED_PEAK_BYTES], t.user_attrs[R.PREDICTED_PEAK_BYTES]
        assert abs(predicted - measured) / measured < 0.25


def test_cap_below_micro_batch_one_is_a_user_error(tmp_path, sqlite_url):
    proc = run_cli("tune", "--model", "small_cnn", "--n-trials", "1", "--max-memory", "10KiB",
                   "--storage", sqlite_url, cwd=tmp_path)
    assert proc.returncode == 2 and "micro-batch 1" in proc.stderr and "measured" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pruning_prunes_bad_learning_rates_early(tmp_path, sqlite_url):
    config = tmp_path / "wide.toml"
    config.write_text('[space]\nlr_multiplier_min = 0.001\nlr_multiplier_max = 300.0\n'
                      'batch_size_min = 16\nbatch_size_max = 64\naccumulation_steps = [1]\n')
    proc = run_cli("tune", "--config", str(config), "--model", "small_cnn", "--epochs", "2", "--n-trials", "16", *LEAN,
                   "--seed", "1", "--storage", sqlite_url, "--study-name", "prune", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="prune", storage=sqlite_url)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert complete and pruned, [t.state for t in study.trials]
    full = min(t.user_attrs[R.SAMPLES_SEEN] for t in complete)
    assert any(t.user_attrs[R.SAMPLES_SEEN] < full for t in pruned)
    for t in pruned:
        assert t.user_attrs[R.STOP_REASON] in (R.STOP_PRUNED, R.STOP_DIVERGED)
        assert t.user_attrs[R.STOP_DETAIL]
        # a trial that reached its last checkpoint is a result, never pruned
        assert len(t.intermediate_values) < len(study.user_attrs[R.STUDY_SPEC]["eval_points"])
    eval_points = study.user_attrs[R.STUDY_SPEC]["eval_points"]
    for t in complete + pruned:  # every report sits on the shared samples-seen grid
        assert set(t.intermediate_values) <= set(eval_points)


def test_budget_too_short_for_the_planned_trials_is_refused(tmp_path, sqlite_url):
    # Trials far longer than the budget: refused up front with a budget that fits, nothing stored.
    proc = run_cli("tune", "--model", "small_cnn", "--dataset", "digits", "--budget", "60s", "--epochs", "1000",
                   "--storage", sqlite_url, "--study-name", "budget", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "too short" in proc.stderr and "pass --budget" in proc.stderr and "Traceback" not in proc.stderr
    assert optuna.get_all_study_names(sqlite_url) == []


def test_a_trial_mispredicted_to_fit_is_cut_off_at_the_deadline_and_recorded(tmp_path, sqlite_url):
    """The probe said trials are quick (here: a made-up, far too fast throughput); the deadline
    still holds: the trial is cut off, recorded as ``budget`` and FAIL, not a result."""
    from autobatch.search import TuneSettings
    from autobatch.storage import open_study
    from autobatch.tuning import run_worker, set_limits, tune

    tune(TuneSettings(model="small_cnn", dataset="digits", device="cpu", epochs=1000, n_trials=2,
                      storage=sqlite_url, study_name="budget", baselines=False, create_only=True, **LEAN_SETTINGS))
    study = open_study(sqlite_url, "budget", read_only=False)
    study.set_user_attr(R.STUDY_THROUGHPUT, [[8, 1e9], [256, 1e9]])
    set_limits(study, deadline=time.time() + 8, n_trials=2)
    started = time.time()
    run_worker(study, device_name="cpu")
    assert time.time() - started < 8 + 10
    cut = [t for t in study.get_trials() if t.user_attrs.get(R.STOP_REASON) == R.STOP_BUDGET]
    assert len(cut) == 1, [t.user_attrs.get(R.STOP_REASON) for t in study.trials]
    assert cut[0].state == TrialState.FAIL and cut[0].value is None  # not a result
    assert "budget" in cut[0].user_attrs[R.STOP_DETAIL]
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
