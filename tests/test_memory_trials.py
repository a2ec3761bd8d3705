"""Memory where trials run: each trial's measured peak against the cap and the prediction, the
evaluation batch chosen under the cap, allocation failures as out-of-memory results, and the
study's estimate refit from measured peaks. Small data, a few steps, CPU."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from autobatch import records as R
from autobatch.memory import MemoryEstimate, MemoryModel
from autobatch.records import TrialConfig
from autobatch.search import SearchSpace, TuneSettings
from autobatch.storage import open_study
from autobatch.train import train_trial
from autobatch.tuning import ProbeProgress, TrialFinished, TuneRun, event_line, run_worker, tune
from autobatch.workloads import build_model, load_workload

CPU = torch.device("cpu")
KiB, MiB = 2**10, 2**20


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_workload("digits", seed=0)


def mlp(workload):
    torch.manual_seed(0)
    return build_model("mlp", num_classes=workload.num_classes, input_shape=workload.input_shape)


def trial(workload, model, batch_size=32, **kwargs):
    config = TrialConfig(batch_size=batch_size, learning_rate=0.05)
    return train_trial(model, workload, config, train_samples=6 * batch_size, checkpoints=(2 * batch_size,),
                       device=CPU, **kwargs)


def test_a_trial_measures_training_and_evaluation_separately(digits):
    result = trial(digits, mlp(digits), eval_batch_size=100)
    peaks = result.peaks
    assert result.stop_reason == R.STOP_COMPLETED and peaks.eval_batch_size == 100
    assert peaks.train_bytes > 0 and peaks.eval_bytes > 0 and peaks.failed_phase is None
    assert result.measured_peak_bytes == max(peaks.train_bytes, peaks.eval_bytes)
    assert peaks.rss_bytes is None or peaks.rss_bytes > result.measured_peak_bytes  # resident set, side by side
    bigger = trial(digits, mlp(digits), eval_batch_size=300).peaks
    assert bigger.eval_bytes > peaks.eval_bytes and bigger.train_bytes == peaks.train_bytes


def test_a_training_step_over_the_cap_stops_the_trial(digits):
    result = trial(digits, mlp(digits), memory_cap=64 * KiB)
    assert result.stop_reason == R.STOP_OVER_CAP and result.peaks.failed_phase == "train"
    assert "measured" in result.stop_detail and "> cap 64.0 KiB" in result.stop_detail
    assert result.samples_seen <= 2 * 32 and not result.curve          # stopped at once


def test_an_evaluation_over_the_cap_stops_the_trial(digits):
    free = trial(digits, mlp(digits), eval_batch_size=350).peaks
    assert free.eval_bytes > free.train_bytes
    cap = (free.train_bytes + free.eval_bytes) // 2
    result = trial(digits, mlp(digits), eval_batch_size=350, memory_cap=cap)
    assert result.stop_reason == R.STOP_OVER_CAP and result.peaks.failed_phase == "eval"
    assert result.stop_detail.startswith("evaluation at batch 350")


class Blowup(nn.Module):
    """Asks the CPU allocator for a PiB once the batch passes ``limit``: a real allocation failure."""

    def __init__(self, inner, limit):
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            x = x + x.new_empty(2**48)[:1].sum()
        return self.inner(x)


def test_a_cpu_allocation_failure_is_an_out_of_memory_result(digits):
    result = trial(digits, Blowup(mlp(digits), 16), batch_size=32)
    assert result.stop_reason == R.STOP_OUT_OF_MEMORY and result.peaks.failed_phase == "train"
    assert "can't allocate memory" in result.stop_detail
    evaluation = trial(digits, Blowup(mlp(digits), 40), batch_size=32, eval_batch_size=128)
    assert evaluation.stop_reason == R.STOP_OUT_OF_MEMORY and evaluation.peaks.failed_phase == "eval"


def test_probe_progress_is_shown_line_by_line():
    event = ProbeProgress(phase="train", batch_size=32, peak_bytes=3 * MiB, rss_bytes=4 * MiB, seconds=0.5,
                          model=MemoryModel.from_dict({"fixed_bytes": MiB, "per_sample_bytes": 64 * KiB}),
                          boundary=117, next_size=117)
    line = event_line(event)
    assert "training step at 32: 3.0 MiB" in line and "process RSS 4.0 MiB" in line
    assert "fit: 1.0 MiB + 64.0 KiB/sample" in line and "next 117" in line
    oom = event_line(ProbeProgress(phase="eval", batch_size=8, peak_bytes=None, rss_bytes=None, seconds=0.1,
                                   model=None, boundary=4, next_size=None))
    assert "evaluation at 8: out of memory" in oom and "done, up to 4" in oom


def test_no_completed_trial_over_the_cap_and_the_estimate_is_refit(tmp_path):
    """A study whose stored model under-predicts 4x: trials that go over the cap are infeasible
    (pruned, reason stored, violated constraint), the refit estimate then prunes such sizes
    before training, and no completed trial measured over the cap."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    events = []
    settings = TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.1, n_trials=None,
                            storage=url, study_name="s", max_memory_bytes=256 * KiB, baselines=False,
                            space=SearchSpace(batch_size_min=16, batch_size_max=128), create_only=True,
                            noise_probe=False)
    tune(settings, callbacks=[lambda run, e: events.append(e)])
    assert any(isinstance(e, ProbeProgress) for e in events)
    study = open_study(url, "s")
    probed = study.user_attrs[R.STUDY_MEMORY_MODEL]
    assert probed["eval_model"] and probed["eval_max_batch_size"] >= 1
    low = MemoryModel.from_dict(probed)
    # Replace the stored estimate by one that under-predicts 4x (as the old 2-point fit did).
    wrong = {**probed, "form": "affine", "fixed_bytes": low.predict(1) / 4, "per_sample_bytes": 1.0,
             "probe": {**probed["probe"], "train": {"form": "affine", "fixed_bytes": low.predict(1) / 4,
                                                    "per_sample_bytes": 1.0}, "too_big": None},
             "too_big": None, "eval_model": None, "eval_max_batch_size": 200}
    wrong["probe"]["eval"] = None
    wrong["probe"]["eval_max_batch_size"] = 200
    study.set_user_attr(R.STUDY_MEMORY_MODEL, wrong)
    for b in (128, 128, 16):
        study.enqueue_trial({R.PARAM_BATCH_SIZE: b, R.PARAM_LR_MULTIPLIER: 1.0, R.PARAM_ACCUM: 1})
    finished = []

    def stop_after_three(run, event):
        if isinstance(event, TrialFinished):
            finished.append(event.trial.number)
            if len(finished) == 3:
                run.stop()

    run_worker(study, device_name="cpu", worker_seed=0, run=TuneRun([stop_after_three]))
    trials = open_study(url, "s").get_trials(deepcopy=False)
    assert len(trials) == 3
    first, second = trials[0], trials[1]
    cap = 256 * KiB
    assert first.state == TrialState.PRUNED and first.user_attrs[R.STOP_REASON] == R.STOP_OVER_CAP
    assert first.user_attrs[R.MEMORY_FAILED_PHASE] == "train"
    assert first.system_attrs["constraints"][0] > 0
    assert first.user_attrs[R.MEMORY_PREDICTION_ERROR] < -0.5           # the wrong model, caught
    assert second.user_attrs[R.STOP_REASON] == R.STOP_OVER_MEMORY     # refit: pruned before training
    assert second.user_attrs[R.SAMPLES_SEEN] == 0
    refit = MemoryEstimate.from_dict(open_study(url, "s").user_attrs[R.STUDY_MEMORY_MODEL])
    assert refit.max_batch_size() < 128 and refit.too_big == 128
    for t in trials:
        measured = t.user_attrs.get(R.MEASURED_PEAK_BYTES)
        if t.state == TrialState.COMPLETE:
            assert measured is not None and measured <= cap, (t.number, measured)
        if measured is not None and measured > cap:
            assert t.state == TrialState.PRUNED and t.user_attrs[R.STOP_REASON] == R.STOP_OVER_CAP
    assert any(t.state == TrialState.COMPLETE for t in trials)


def wide_cnn(num_classes, input_shape):
    """Field case c15's model: large activations, evaluation at 4x the batch costs more than training."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(input_shape[0], 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def test_c15_the_evaluation_batch_is_chosen_under_the_cap():
    from autobatch.memory import probe
    from autobatch.train import eval_runner, step_runner

    workload = load_workload("synthetic:1000x3x8x8", seed=0)
    model = wide_cnn(workload.num_classes, workload.input_shape)
    train = dict(dataset=workload.train, device=CPU)
    evaluation = dict(dataset=workload.val, device=CPU)
    free = probe(step_runner(model, **train), device=CPU, cap_bytes=None, space_max=32,
                 run_eval=eval_runner(model, **evaluation), eval_space_max=len(workload.val))
    train32, eval128 = free.estimate.predict_parts(32)
    assert free.estimate.eval_batch(32) == 128 and eval128 > train32   # evaluation is the larger
    cap = int((train32 + eval128) / 2)
    capped = probe(step_runner(model, **train), device=CPU, cap_bytes=cap, space_max=32,
                   run_eval=eval_runner(model, **evaluation), eval_space_max=len(workload.val))
    estimate = capped.estimate
    assert capped.max_batch_size >= 32 and estimate.eval_batch(32) < 128
    assert estimate.predict(32) <= cap
    result = trial(workload, model, batch_size=32, eval_batch_size=estimate.eval_batch(32), memory_cap=cap)
    assert result.stop_reason == R.STOP_COMPLETED
    assert result.peaks.eval_bytes <= cap and result.measured_peak_bytes <= cap
    assert result.peaks.eval_bytes > result.peaks.train_bytes      # the evaluation really was the binding part


def test_a_trained_trial_stores_its_memory_records_with_its_results(tmp_path, monkeypatch):
    """The measured peak's prediction error and the memory constraint go in the one write of
    the trial's results with its end (no parameter, attribute or state written on its own, no re-read of the study's attributes
    per trial, stale trials looked for once per heartbeat interval), and read back as Optuna's
    ``Trial.set_constraint`` would have stored them."""
    import collections

    import optuna

    from autobatch.storage import _rdb

    calls: collections.Counter = collections.Counter()
    counting = []  # from the study being ready (the worker loop) on
    one_each = ("set_trial_user_attr", "set_trial_system_attr", "set_trial_param", "set_trial_intermediate_value",
                "set_trial_state_values", "write_trial_attrs")  # Optuna's transaction per item
    names = (*one_each, "set_study_user_attr", "get_study_user_attrs", "_get_stale_trial_ids", "write_trial")
    for name in names:
        original = getattr(_rdb._RetryingRDBStorage, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += bool(counting)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(_rdb._RetryingRDBStorage, name, counted)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    space = SearchSpace(batch_size_min=16, batch_size_max=64, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.2, n_trials=5, storage=url,
                      study_name="s", baselines=False, space=space, pruner="none", verify_runs=0, noise_probe=False),
         callbacks=[lambda run, event: counting.append(1) if type(event).__name__ == "StudyReady" else None])
    trials = optuna.load_study(study_name="s", storage=url).get_trials(deepcopy=False)
    trained = [t for t in trials if t.user_attrs.get(R.SAMPLES_SEEN)]
    assert len(trained) == 5
    for t in trained:
        over = t.system_attrs[R.MEMORY_CONSTRAINT]  # (peak - cap) / cap, the machine's memory the cap
        assert -1 < over < 0 and t.system_attrs[R.LEGACY_CONSTRAINTS] == [over]
        assert R.MEMORY_PREDICTION_ERROR in t.user_attrs and t.user_attrs[R.MEASURED_PEAK_BYTES] > 0
    assert not any(calls[name] for name in one_each), calls
    assert calls["set_study_user_attr"] <= 2  # the answer and its key, once: each refit memory estimate goes with a trial's end
    # per trial: its parameters with its configuration, each report, its results with its end
    assert calls["write_trial"] == sum(2 + len(t.intermediate_values) for t in trained)
    assert calls["get_study_user_attrs"] <= 5  # the worker's start and the answer's reads (its stored verification one); was 2 per trial
    assert calls["_get_stale_trial_ids"] <= 2


# --- CPU peaks measured once per micro-batch setting ------------------------------------------

def test_cpu_peaks_are_the_same_at_the_same_shapes_whatever_the_seed_and_rate(digits):
    """What reusing an earlier trial's peaks rests on: on CPU the accounting is exact, so two
    trials at the same micro-batch, accumulation and evaluation batch measure the same bytes
    (other seeds, learning rates and models' initial weights)."""
    first = train_trial(mlp(digits), digits, TrialConfig(batch_size=16, learning_rate=0.05, accumulation_steps=2),
                        train_samples=6 * 32, checkpoints=(64,), device=CPU, seed=1, eval_batch_size=64)
    torch.manual_seed(7)
    again = train_trial(build_model("mlp", num_classes=digits.num_classes, input_shape=digits.input_shape), digits,
                        TrialConfig(batch_size=16, learning_rate=0.3, accumulation_steps=2),
                        train_samples=6 * 32, checkpoints=(64,), device=CPU, seed=2, eval_batch_size=64)
    assert (first.peaks.train_bytes, first.peaks.eval_bytes) == (again.peaks.train_bytes, again.peaks.eval_bytes)
    assert first.peaks.train_bytes > 0 and first.peaks.eval_bytes > 0


def _frozen(number: int, **attrs):
    import optuna

    base = {R.BATCH_SIZE: 16, R.ACCUMULATION_STEPS: 1, R.EVAL_BATCH_SIZE: 64, R.DEVICE: "cpu", R.SAMPLES_SEEN: 96,
            R.MEASURED_TRAIN_PEAK_BYTES: 1000 + number, R.MEASURED_EVAL_PEAK_BYTES: 500 + number}
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={**base, **attrs})
    trial.number = number
    return trial


def test_known_peaks_are_a_measured_trial_at_exactly_the_same_setting():
    from autobatch.tuning._memcheck import known_peaks

    def config(batch_size: int, accumulation: int = 1) -> TrialConfig:
        return TrialConfig(batch_size=batch_size, learning_rate=0.05, accumulation_steps=accumulation)

    trials = [_frozen(0), _frozen(1), _frozen(2, **{R.MEMORY_MEASURED_IN: 1}),
              _frozen(3, **{R.ACCUMULATION_STEPS: 2}), _frozen(4, **{R.EVAL_BATCH_SIZE: 128}),
              _frozen(5, **{R.DEVICE: "cuda:0"}), _frozen(6, **{R.MEMORY_FAILED_PHASE: "eval"}),
              _frozen(7, **{R.MEASURED_EVAL_PEAK_BYTES: None}),
              _frozen(8, **{R.SAMPLES_SEEN: 16})]   # stopped after one of its two measured steps
    found = known_peaks(trials, config(16), 64, cap=None, train_samples=96)
    assert (found.number, found.train_bytes, found.eval_bytes) == (1, 1001, 501)  # the latest measured, not a copy
    assert known_peaks(trials, config(16, 2), 64, cap=None, train_samples=96).number == 3
    assert known_peaks(trials, config(32), 128, cap=None, train_samples=96) is None      # never measured there
    assert known_peaks(trials, config(16), 64, cap=1000, train_samples=96) is None       # over the cap: measured again
    assert known_peaks([], config(16), 64, cap=None, train_samples=96) is None
    # a one-step study: trial 8's one step is all its measured steps
    assert known_peaks(trials, config(16), 64, cap=None, train_samples=16).number == 8


@pytest.mark.parametrize("batch_size, accumulation, checkpoints, train_samples", [
    (16, 1, (16, 96), 96),   # the first evaluation comes after one step, inside the measured steps
    (8, 2, (16, 96), 96),    # ... with accumulation
    (16, 1, (16,), 16),      # a one-step trial
    (16, 1, (32, 96), 96),   # the evaluation after the measured steps
])
def test_a_trial_reusing_known_peaks_stores_what_a_measuring_trial_stores(digits, batch_size, accumulation,
                                                                           checkpoints, train_samples):
    """A trial that reuses the peaks measured at its shape stores the same training and evaluation
    peaks, and the same ``measured_peak_bytes`` (their max), as a trial measuring there; stopped
    at the first evaluation, never less than a measuring trial stopped there (which measured
    only the steps it ran)."""
    from autobatch.tuning._memcheck import KnownPeaks, with_known_peaks

    config = TrialConfig(batch_size=batch_size, learning_rate=0.05, accumulation_steps=accumulation)

    def run(measure: bool, **kwargs):
        return train_trial(mlp(digits), digits, config, train_samples=train_samples, checkpoints=checkpoints,
                           device=CPU, seed=1, eval_batch_size=64, measure_memory=measure, **kwargs)

    source, bare = run(True), run(False)  # the earlier trial whose peaks are known, and one reusing them
    known = KnownPeaks(0, source.peaks.train_bytes, source.peaks.eval_bytes)
    assert bare.peaks.train_bytes is None
    reused = with_known_peaks(bare, known, 64)
    assert reused.peaks.train_bytes == source.peaks.train_bytes > 0
    assert reused.peaks.eval_bytes == source.peaks.eval_bytes > 0
    assert reused.measured_peak_bytes == source.measured_peak_bytes == max(known.train_bytes, known.eval_bytes)
    pruned, pruned_bare = run(True, on_eval=lambda point: True), run(False, on_eval=lambda point: True)
    assert pruned.samples_seen == pruned_bare.samples_seen
    stopped = with_known_peaks(pruned_bare, known, 64)
    assert stopped.peaks.train_bytes == source.peaks.train_bytes >= pruned.peaks.train_bytes > 0
    assert stopped.measured_peak_bytes >= pruned.measured_peak_bytes


def test_a_trial_cut_off_before_its_first_step_is_given_no_known_peak(digits):
    """The known training peak is the shape's once a step ran (``measured_train_samples``: the
    measured steps, all of a shorter trial's); a reusing trial cut off before any step stores
    no peak, and one cut off after a step stores the training peak but no evaluation peak."""
    from autobatch.tuning._memcheck import KnownPeaks, measured_train_samples, with_known_peaks

    config = TrialConfig(batch_size=16, learning_rate=0.05)
    assert measured_train_samples(config, 96) == 32 and measured_train_samples(config, 16) == 16
    assert measured_train_samples(TrialConfig(batch_size=16, learning_rate=0.05, accumulation_steps=4), 96) == 128
    cut = train_trial(mlp(digits), digits, config, train_samples=96, checkpoints=(32, 96), device=CPU,
                      measure_memory=False, deadline=0.0)
    assert cut.stop_reason == R.STOP_BUDGET and cut.samples_seen == 16
    reused = with_known_peaks(cut, KnownPeaks(0, 1000, 500), 64)
    assert reused.peaks.train_bytes == 1000 and reused.peaks.eval_bytes is None and reused.measured_peak_bytes == 1000
    none = with_known_peaks(dataclasses.replace(cut, samples_seen=0), KnownPeaks(0, 1000, 500), 64)
    assert none.peaks.train_bytes is None and none.measured_peak_bytes is None


def test_only_in_memory_tensors_count_as_fixed_shapes(digits):
    from torch.utils.data import Dataset, Subset

    from autobatch.tuning._memcheck import fixed_shapes

    class Ragged(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(i + 1), 0

    assert fixed_shapes(digits.train, digits.val)
    assert fixed_shapes(Subset(digits.train, [0, 1]), Subset(Subset(digits.val, [0, 1, 2]), [0]))
    assert not fixed_shapes(Ragged(), digits.val) and not fixed_shapes(digits.train, Ragged())


def test_a_study_profiles_each_cpu_micro_batch_setting_once(tmp_path):
    """Trials at a micro-batch setting already measured run without the profiler and store the
    measuring trial's exact peaks, saying which trial measured them; the estimate is unchanged."""
    import optuna

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    space = SearchSpace(batch_size_min=16, batch_size_max=16, accumulation_steps=(1,),
                        lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.2, n_trials=4, storage=url,
                      study_name="s", baselines=False, space=space, pruner="none", verify_runs=0, noise_probe=False))
    trials = [t for t in optuna.load_study(study_name="s", storage=url).trials if t.user_attrs.get(R.SAMPLES_SEEN)]
    assert len(trials) == 4
    measured = [t for t in trials if R.MEMORY_MEASURED_IN not in t.user_attrs]
    reused = [t for t in trials if R.MEMORY_MEASURED_IN in t.user_attrs]
    assert len(measured) == 1 and len(reused) == 3
    keys = (R.MEASURED_TRAIN_PEAK_BYTES, R.MEASURED_EVAL_PEAK_BYTES, R.MEASURED_PEAK_BYTES, R.EVAL_BATCH_SIZE)
    for t in reused:
        assert t.user_attrs[R.MEMORY_MEASURED_IN] == measured[0].number
        assert [t.user_attrs[k] for k in keys] == [measured[0].user_attrs[k] for k in keys]
        assert R.MEMORY_PREDICTION_ERROR in t.user_attrs


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_measured_steps_are_measured_in_one_window(digits, optimizer):
    """The trial measures its first ``MEASURED_STEPS`` steps in one profiler window (a window's
    start, stop and event read cost ~6 ms), as the probe measures its steps: the training peak
    is what one window around those steps measures (everything they hold, the batch and the
    step's loss included), never less than each step measured in its own window with the
    state alive before it; an evaluation within them ends the window before it, and the steps
    left are measured in a window of their own."""
    from autobatch.memory import TrialMeter, live_tensor_bytes
    from autobatch.recipe import TrainRecipe
    from autobatch.train._batches import MicroBatches
    from autobatch.train._build import make_compute_loss, make_optimizer, make_precision
    from autobatch.train._step import train_step
    from autobatch.train._trial import MEASURED_STEPS, state_tensors

    # micro-batch 128: the activations are large enough that the second step, the first with the
    # optimizer's state, peaks above the first
    recipe, config = TrainRecipe(optimizer=optimizer), TrialConfig(batch_size=128, learning_rate=0.01)
    compute_loss, precision = make_compute_loss(recipe), make_precision(recipe, CPU)

    def steps_measured(steps: int, one_window: bool, first: int = 0) -> int:
        """The peak of ``steps`` steps, in one window or one each; ``first``: that many steps
        in a window of their own before them."""
        model = mlp(digits)
        opt = make_optimizer(model.parameters(), config.learning_rate, recipe)
        batches, meter, kept = MicroBatches(digits.train, 128, CPU, 3), TrialMeter(CPU), []
        live = lambda: live_tensor_bytes(state_tensors(model, opt))  # noqa: E731

        def step() -> None:
            kept.append(train_step(model, opt, batches.next, accumulation_steps=1,
                                   compute_loss=compute_loss, precision=precision))
        with meter.phase("train", live) if first else contextlib.nullcontext():
            for _ in range(first):
                step()
        with meter.phase("train", live) if one_window else contextlib.nullcontext():
            for _ in range(steps):
                with contextlib.nullcontext() if one_window else meter.phase("train", live):
                    step()
        batches.close()
        return meter.peaks["train"]

    result = train_trial(mlp(digits), digits, config, train_samples=640, checkpoints=(640,),
                         device=CPU, recipe=recipe, seed=3)
    assert result.peaks.train_bytes == steps_measured(MEASURED_STEPS, one_window=True), optimizer
    assert result.peaks.train_bytes >= steps_measured(MEASURED_STEPS, one_window=False)
    # an evaluation after the first step ends the window; a new one measures the second step,
    # the first with the optimizer's state
    split = train_trial(mlp(digits), digits, config, train_samples=640, checkpoints=(128, 640),
                        device=CPU, recipe=recipe, seed=3)
    assert split.peaks.train_bytes == steps_measured(MEASURED_STEPS - 1, one_window=True, first=1), optimizer
    assert split.peaks.train_bytes >= steps_measured(MEASURED_STEPS, one_window=False)
    assert split.peaks.train_bytes > steps_measured(1, one_window=True)  # the second step was measured
