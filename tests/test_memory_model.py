"""The pure memory model: forms, their fit and inverse, intervals, the adaptive probe plan, and a
study's estimate refit from trials; against synthetic "true" peak curves (bytes as a function of
the micro-batch b). No torch."""

import json
import math

import numpy as np
import pytest

from autobatch.memory import (UNBOUNDED_BATCH_SIZE, Affine, MemoryEstimate, MemoryModel, Piecewise, Quadratic,
                              TrialPeaks, TwoRegime, plan_probe, prediction_interval, refit, store_models)
from autobatch.memory import fit_memory_model as fit
from autobatch.memory import relative_error as _rel

model_from_dict = MemoryModel.from_dict


def relative_error(model, b, measured):
    return _rel(model.predict(b), measured)


def run_plan(measure, **kwargs):
    measured = []
    while not (step := plan_probe(measured, **kwargs)).done:
        measured.append((step.next_size, measure(step.next_size)))
    return step, measured

KiB, MiB, GiB = 2**10, 2**20, 2**30


# Synthetic truths. c20: built-in mlp on digits; the step regime grows 264 B/sample (the input
# batch: 64 float32 + an int64 label), activations 1351 B/sample; 504 KiB at 256 as measured.
def c20(b):
    return max(180_800 + 264 * b, 170_190 + 1351 * b)


def mobilenet(b):  # 1.6 KB from 2 to 8 (step regime), 1.54 MB from 8 to 32 (activations)
    return max(9e6 + 264 * b, 9e6 + 264 * 8 + 64_000 * (b - 8))


def quadratic(b):  # b x b similarity matrices: 1 KiB per (sample, sample) pair
    return 64 * KiB + 2 * KiB * b + 1 * KiB * b * b


def affine(b):
    return 10e6 + 50e3 * b


def c14(b):  # wide CNN on 3x128x128: ~20 MiB/sample on CPU
    return 100 * MiB + 20 * MiB * b


def true_limit(curve, cap, upper):
    return upper if cap is None else min(upper, next(b for b in range(1, 10**7) if curve(b + 1) > cap))


FORMS = [
    Affine(fixed_bytes=1e6, per_sample_bytes=3e3),
    TwoRegime(step_bytes=5e6, fixed_bytes=-2e6, per_sample_bytes=7e4),
    TwoRegime(step_bytes=5e6, step_per_sample_bytes=300.0, fixed_bytes=1e6, per_sample_bytes=9e4),
    Quadratic(fixed_bytes=1e5, per_sample_bytes=2e3, per_sample2_bytes=17.5),
    Piecewise(knot_sizes=(2, 8, 32, 100), knot_bytes=(1e6, 1.1e6, 2e6, 9e6)),
]


# --- Forms --------------------------------------------------------------------------------

def test_forms_predict_their_formulas():
    assert FORMS[0].predict(10) == 1e6 + 3e4
    assert FORMS[1].predict(10) == 5e6 and FORMS[1].predict(200) == -2e6 + 1.4e7
    assert FORMS[2].predict(10) == 5e6 + 3e3
    assert FORMS[3].predict(10) == 1e5 + 2e4 + 1750
    pw = FORMS[4]
    assert pw.predict(1) == 1e6 and pw.predict(8) == 1.1e6 and pw.predict(20) == 1.55e6
    assert pw.predict(168) == 9e6 + 7e6  # last slope (7e6 / 68) continued for 68 more samples


@pytest.mark.parametrize("model", FORMS, ids=lambda m: m.form)
def test_inverse_is_exact_at_the_boundary(model):
    rng = np.random.default_rng(1)
    for cap in [*rng.uniform(model.predict(1), model.predict(5000), 200), model.predict(37)]:
        m = model.max_batch_size(cap)
        assert m >= 1 and model.predict(m) <= cap < model.predict(m + 1)
    assert model.max_batch_size(model.predict(37)) == 37 or model.predict(38) == model.predict(37)


@pytest.mark.parametrize("model", FORMS, ids=lambda m: m.form)
def test_inverse_zero_below_one_sample(model):
    assert model.max_batch_size(model.predict(1) - 1) == 0


def test_inverse_unbounded_when_memory_stops_growing():
    flat = [Affine(fixed_bytes=1e6, per_sample_bytes=0.0),
            TwoRegime(step_bytes=1e6, fixed_bytes=0.0, per_sample_bytes=0.0),
            Piecewise(knot_sizes=(2, 8), knot_bytes=(1e6, 1e6))]
    for model in flat:
        assert model.max_batch_size(1e6) == UNBOUNDED_BATCH_SIZE
    assert Affine(fixed_bytes=0.0, per_sample_bytes=1.0).max_batch_size(1e12) == UNBOUNDED_BATCH_SIZE


@pytest.mark.parametrize("model", FORMS, ids=lambda m: m.form)
def test_dict_round_trip(model):
    data = json.loads(json.dumps(model.to_dict()))
    assert data["form"] == model.form
    assert model_from_dict(data) == model


def test_invalid_coefficients_raise():
    with pytest.raises(ValueError):
        Affine(fixed_bytes=1.0, per_sample_bytes=-1.0)
    with pytest.raises(ValueError):
        Quadratic(fixed_bytes=1.0, per_sample_bytes=1.0, per_sample2_bytes=math.nan)
    with pytest.raises(ValueError):
        Piecewise(knot_sizes=(2, 8), knot_bytes=(2.0, 1.0))
    with pytest.raises(KeyError):
        model_from_dict({"form": "cubic"})


def test_legacy_affine_dict_reads_as_affine():
    old = {"fixed_bytes": 1.5e8, "per_sample_bytes": 4.5e5, "cap_bytes": 2**30, "max_batch_size": 2000,
           "sizes": [2, 8], "check": None, "device": "cpu"}
    assert model_from_dict(old) == Affine(fixed_bytes=1.5e8, per_sample_bytes=4.5e5)
    estimate = MemoryEstimate.from_dict(old)
    assert estimate.train == Affine(fixed_bytes=1.5e8, per_sample_bytes=4.5e5)
    assert estimate.eval is None and estimate.cap_bytes == 2**30
    assert estimate.predict(10) == 1.5e8 + 4.5e6 and estimate.eval_batch(10) == 40
    # an old least-squares line crossing zero keeps its predictions, floored at zero
    crossing = model_from_dict({"fixed_bytes": -1e5, "per_sample_bytes": 1e4})
    assert crossing.predict(100) == 9e5 and crossing.predict(1) == 0.0


# --- Fit ----------------------------------------------------------------------------------

def points(curve, sizes, noise=0.0):
    rng = np.random.default_rng(7)
    return [(b, curve(b) * (1 + rng.uniform(-noise, noise))) for b in sizes]


def test_fit_recovers_affine():
    model = fit(points(affine, (2, 8, 32, 128, 512)))
    assert model.form == "affine"
    assert model.fixed_bytes == pytest.approx(10e6) and model.per_sample_bytes == pytest.approx(50e3)


def test_fit_keeps_affine_under_measurement_noise():
    assert fit(points(affine, (2, 8, 32, 128, 512), noise=5e-4)).form == "affine"


def test_two_points_in_the_step_regime_give_the_old_264_bytes_per_sample():
    # What the old probe did (sizes 2 and 8): nothing can be detected from two points ...
    model = fit(points(c20, (2, 8)))
    assert model.per_sample_bytes == pytest.approx(264) and model.max_batch_size(320 * KiB) == 556


def test_c20_third_size_detects_the_second_regime():
    # ... a third size does: the 5x change of slope is not hidden by the 181 KB step floor.
    three = fit(points(c20, (2, 8, 32)))
    assert three.form != "affine"
    assert three.max_batch_size(320 * KiB) < 130            # not 556 (the truth is 116)
    four = fit(points(c20, (2, 8, 32, 128)))
    assert four.form == "two_regime"
    assert four.per_sample_bytes == pytest.approx(1351) and four.step_per_sample_bytes == pytest.approx(264)
    assert four.max_batch_size(320 * KiB) == true_limit(c20, 320 * KiB, 10**6) == 116
    assert relative_error(four, 256, 504 * KiB) == pytest.approx(0, abs=1e-3)


def test_mobilenet_like_floor_is_not_extrapolated():
    model = fit(points(mobilenet, (2, 8, 32)))
    assert model.form == "two_regime" and model.per_sample_bytes == pytest.approx(64_000)
    assert fit(points(mobilenet, (2, 8))).max_batch_size(4 * GiB) > 16_000_000   # the bug
    assert model.max_batch_size(4 * GiB) == true_limit(mobilenet, 4 * GiB, 10**6)


def test_fit_recovers_quadratic_where_affine_is_far_off():
    line = fit(points(quadratic, (2, 8)))
    assert relative_error(line, 32, quadratic(32)) < -0.6      # the probe's own check, -66%
    model = fit(points(quadratic, (2, 8, 32)))
    assert model.form == "quadratic"
    assert (model.fixed_bytes, model.per_sample_bytes, model.per_sample2_bytes) == pytest.approx(
        (64 * KiB, 2 * KiB, 1 * KiB))
    assert model.max_batch_size(16 * MiB) == true_limit(quadratic, 16 * MiB, 10**6)


def test_fit_falls_back_to_piecewise_for_a_concave_curve():
    pts = points(lambda b: 1e6 + 1e5 * math.sqrt(b), (1, 4, 16, 64, 256))
    model = fit(pts)
    assert model.form == "piecewise"
    assert all(model.predict(b) == pytest.approx(y) for b, y in pts)
    slope = (pts[-1][1] - pts[-2][1]) / 192
    assert model.predict(512) == pytest.approx(pts[-1][1] + 256 * slope)


@pytest.mark.parametrize("curve", [c20, mobilenet, quadratic, affine, c14,
                                   lambda b: 1e6 + 1e5 * math.sqrt(b)])
@pytest.mark.parametrize("noise", [0.0, 3e-3])
def test_fit_never_predicts_below_a_measurement(curve, noise):
    for sizes in [(2, 8), (2, 8, 32), (2, 8, 32, 128), (1, 3, 9, 27, 81, 243)]:
        pts = points(curve, sizes, noise)
        model = fit(pts)
        assert all(model.predict(b) >= y * (1 - 1e-12) for b, y in pts), model


def test_fit_takes_the_largest_peak_of_a_repeated_size_and_needs_two_sizes():
    assert fit([(2, 10.0), (2, 12.0), (4, 20.0)]).predict(2) >= 12.0
    with pytest.raises(ValueError):
        fit([(2, 10.0), (2, 11.0)])
    with pytest.raises(ValueError):
        fit([(2, 10.0), (4, -1.0)])


# --- Errors and intervals -----------------------------------------------------------------

def test_relative_error_is_signed():
    assert _rel(100.0, 80.0) == pytest.approx(0.25)
    assert _rel(100.0, 125.0) == pytest.approx(-0.2)
    with pytest.raises(ValueError):
        _rel(100.0, 0.0)


@pytest.mark.parametrize("model", FORMS, ids=lambda m: m.form)
def test_interval_is_never_negative_and_holds_the_measurements(model):
    pts = [(b, model.predict(b) * f) for b, f in [(2, 0.2), (8, 1.9), (32, 1.0)]]  # wild errors
    for b in (1, 2, 8, 32, 1000):
        lo, hi = prediction_interval(model, b, pts)
        assert 0 <= lo <= model.predict(b) <= hi
    for b, y in pts:
        lo, hi = prediction_interval(model, b, pts)
        assert lo <= y <= hi


def test_interval_widens_with_extrapolation():
    model = fit(points(affine, (2, 8, 32)))
    pts = points(affine, (2, 8, 32))
    (lo32, hi32), (lo320, hi320) = (prediction_interval(model, b, pts) for b in (32, 320))
    assert hi32 / lo32 == pytest.approx(1.05**2) and hi320 / lo320 > hi32 / lo32 * 2


# --- Planner ------------------------------------------------------------------------------

CASES = {  # curve, cap, space max, dataset size
    "c20-mlp-digits-320KiB": (c20, 320 * KiB, 1024, 1797),
    "mobilenet-4GiB": (mobilenet, 4 * GiB, 256, None),
    "mobilenet-20MB": (mobilenet, 20e6, 1024, None),
    "quadratic-16MiB": (quadratic, 16 * MiB, 1024, None),
    "affine-cap": (affine, 100e6, 4096, None),
    "affine-space": (affine, 1e9, 512, None),
    "affine-no-cap": (affine, None, 512, None),
    "affine-dataset": (affine, None, 512, 100),
    "c14-cpu-available": (c14, 4 * GiB, 256, None),
}


@pytest.mark.parametrize("name", CASES)
def test_planner_converges_within_five_sizes_and_five_percent(name):
    curve, cap, space_max, dataset_max = CASES[name]
    step, measured = run_plan(lambda b: float(curve(b)), cap_bytes=cap, space_max=space_max,
                              dataset_max=dataset_max)
    assert step.converged and len(measured) <= 5, (step, measured)
    assert step.boundary == true_limit(curve, cap, min(space_max, dataset_max or space_max))
    assert abs(relative_error(step.model, step.boundary, curve(step.boundary))) <= 0.05
    assert cap is None or curve(step.boundary) <= cap


def test_planner_does_not_trust_two_sizes_in_the_step_regime():
    first = plan_probe([], cap_bytes=320 * KiB, space_max=1024)
    assert first.next_size == 2 and not first.done
    after_two = plan_probe([(2, c20(2)), (8, c20(8))], cap_bytes=320 * KiB, space_max=1024)
    assert after_two.model.max_batch_size(320 * KiB) == 556 and after_two.next_size == 32


@pytest.mark.parametrize("curve", [c20, mobilenet, quadratic, affine])
@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_planner_over_a_range_of_caps(curve, noise):
    rng = np.random.default_rng(3)
    for cap in curve(1) * np.geomspace(1.2, 150, 9):
        for space_max in (256, 4096):
            eps = {}

            def measure(b, eps=eps):
                return float(curve(b) * (1 + eps.setdefault(b, rng.uniform(-noise, noise))))

            step, measured = run_plan(measure, cap_bytes=cap, space_max=space_max)
            truth = true_limit(curve, cap, space_max)
            assert len(measured) <= 5 and step.boundary >= 0.9 * truth
            assert abs(relative_error(step.model, step.boundary, curve(step.boundary))) <= 0.05
            assert curve(step.boundary) <= cap * (1 + noise)


def test_out_of_memory_bounds_the_answer_by_bisection():
    oom_above = 150e6  # the device holds less than the (wrong) cap says

    def measure(b):
        return None if affine(b) > oom_above else float(affine(b))

    step, measured = run_plan(measure, cap_bytes=1e9, space_max=4096)
    sizes = [b for b, _ in measured]
    failed = [b for b, y in measured if y is None]
    assert sizes[:4] == [2, 8, 32, 4096] and failed == [4096]
    assert sizes[4] == (32 + 4096) // 2                          # bisection
    assert step.boundary == 2064 and (2064, affine(2064)) in measured  # measured, not extrapolated
    assert not step.converged and len(measured) == 5


def test_planner_never_proposes_a_size_at_or_above_a_failure():
    measured = [(2, c20(2)), (8, c20(8)), (32, c20(32)), (64, None)]
    step = plan_probe(measured, cap_bytes=1 * GiB, space_max=1024)
    assert step.next_size == 48 and step.boundary == 32


def test_nothing_fits():
    assert plan_probe([(2, None)], cap_bytes=None, space_max=64).next_size == 1
    done = plan_probe([(2, None), (1, None)], cap_bytes=None, space_max=64)
    assert done.done and done.converged and done.boundary == 0
    over_cap = run_plan(lambda b: float(affine(b)), cap_bytes=5e6, space_max=64)[0]
    assert over_cap.done and over_cap.boundary == 0
    one = run_plan(lambda b: float(affine(b)), cap_bytes=affine(1), space_max=64)[0]
    assert one.boundary == 1


def test_planner_moves_up_past_sizes_too_small_for_the_model():
    assert plan_probe([], cap_bytes=None, space_max=64, floor=2).next_size == 4          # twice the floor
    assert plan_probe([], cap_bytes=None, space_max=64, start=8, floor=2).next_size == 8  # never below start
    # out of memory at 8 and too small at 4: bisect above the floor, never down to it
    assert plan_probe([(8, None)], cap_bytes=None, space_max=64, floor=4).next_size == 6
    done = plan_probe([(8, None), (6, None)], cap_bytes=None, space_max=64, floor=5)
    assert done.done and done.boundary == 0 and "too small" in done.reason
    top = plan_probe([], cap_bytes=None, space_max=64, floor=64)  # the model fails up to the largest size
    assert top.done and top.boundary == 0 and not top.converged and top.model is None


def test_planner_state_is_a_pure_function_of_its_inputs():
    measured = [(2, c20(2)), (8, c20(8)), (32, c20(32))]
    a = plan_probe(measured, cap_bytes=320 * KiB, space_max=1024)
    b = plan_probe(list(measured), cap_bytes=320 * KiB, space_max=1024)
    assert a == b and a.next_size == a.model.max_batch_size(320 * KiB)


def test_planner_reports_the_validation_error_of_the_newest_point():
    step = plan_probe([(2, c20(2)), (8, c20(8)), (32, c20(32))], cap_bytes=320 * KiB, space_max=1024)
    assert step.validation_error == pytest.approx(relative_error(fit([(2, c20(2)), (8, c20(8))]), 32, c20(32)))
    assert step.validation_error < -0.05   # the step regime's line under-predicts 32


# --- A study's estimate: training + evaluation, refit from trials --------------------------

def probe_dict(train, evaluation=None, *, cap, eval_max=None, points=()):
    estimate = MemoryEstimate(train=train, eval=evaluation, eval_max_batch_size=eval_max, cap_bytes=cap)
    base = {"probe": {"train": train.to_dict(), "eval": evaluation.to_dict() if evaluation else None,
                      "eval_max_batch_size": eval_max, "too_big": None},
            "points": [{"batch_size": b, "peak_bytes": y} for b, y in points]}
    return json.loads(json.dumps(store_models(base, estimate)))


def test_estimate_takes_the_larger_of_training_and_evaluation():
    train = Affine(fixed_bytes=10 * MiB, per_sample_bytes=1 * MiB)
    evaluation = Affine(fixed_bytes=5 * MiB, per_sample_bytes=0.75 * MiB)
    data = probe_dict(train, evaluation, cap=100 * MiB, eval_max=126)
    estimate = MemoryEstimate.from_dict(data)
    assert estimate.eval_batch(8) == 32 and estimate.eval_batch(64) == 126
    assert estimate.predict(8) == max(train.predict(8), evaluation.predict(32)) == evaluation.predict(32)
    assert estimate.predict_parts(64) == (train.predict(64), evaluation.predict(126))
    assert estimate.max_batch_size() == 90 and data["max_batch_size"] == 90
    assert MemoryModel.from_dict(data) == train       # the training model at the top level


def test_refit_corrects_an_under_prediction_and_keeps_the_form_otherwise():
    truth = lambda b: 10 * MiB + 1.2 * MiB * b    # noqa: E731 - the probe under-predicted by 20%/sample
    train = Affine(fixed_bytes=10 * MiB, per_sample_bytes=1 * MiB)
    data = probe_dict(train, cap=100 * MiB, points=[(2, train.predict(2)), (8, train.predict(8))])
    agreeing = refit(data, [TrialPeaks(batch_size=4, train_bytes=train.predict(4))])
    assert MemoryModel.from_dict(agreeing) == train     # a trial below the prediction corrects nothing
    corrected = refit(data, [TrialPeaks(batch_size=64, train_bytes=truth(64))])
    model = MemoryModel.from_dict(corrected)
    assert model.predict(64) >= truth(64) and model.max_batch_size(100 * MiB) < train.max_batch_size(100 * MiB)
    assert corrected["max_batch_size"] == model.max_batch_size(100 * MiB)
    assert MemoryEstimate.from_dict(corrected).predict(64) >= truth(64)
    # refits start from the probe's model each time: they do not compound
    again = refit(corrected, [TrialPeaks(batch_size=64, train_bytes=truth(64))])
    assert MemoryModel.from_dict(again) == model
    assert again["trial_points"] == [{"batch_size": 64, "train_bytes": truth(64), "eval_batch_size": None,
                                      "eval_bytes": None, "failed": None}]


def test_refit_of_a_study_that_repeats_micro_batches_is_the_refit_of_its_distinct_points():
    """A long study measures the same few micro-batches again and again: the refit, and the
    points the attribute keeps, are those of the distinct measurements (it does not grow with
    the trials)."""
    truth = lambda b: 10 * MiB + 1.2 * MiB * b    # noqa: E731
    train = Affine(fixed_bytes=10 * MiB, per_sample_bytes=1 * MiB)
    data = probe_dict(train, cap=100 * MiB, points=[(2, train.predict(2)), (8, train.predict(8))])
    distinct = [TrialPeaks(batch_size=b, train_bytes=truth(b), eval_batch_size=4 * b, eval_bytes=2 * MiB * b)
                for b in (16, 64, 32)] + [TrialPeaks(batch_size=80, failed="train")]
    repeated = [distinct[i % len(distinct)] for i in range(1000)]
    assert refit(data, repeated) == refit(data, distinct)
    assert [p["batch_size"] for p in refit(data, repeated)["trial_points"]] == [16, 64, 32, 80]


def test_refit_bounds_the_batch_by_what_did_not_fit():
    train = Affine(fixed_bytes=10 * MiB, per_sample_bytes=1 * MiB)
    evaluation = Affine(fixed_bytes=5 * MiB, per_sample_bytes=0.5 * MiB)
    data = probe_dict(train, evaluation, cap=100 * MiB, eval_max=180)
    out = MemoryEstimate.from_dict(refit(data, [TrialPeaks(batch_size=64, failed="train")]))
    assert out.too_big == 64 and out.max_batch_size() == 63
    out = MemoryEstimate.from_dict(refit(data, [TrialPeaks(batch_size=32, eval_batch_size=128, failed="eval")]))
    assert out.too_big is None and out.eval_max_batch_size == 127 and out.eval_batch(64) == 127
    # an evaluation measured above its model lowers the evaluation limit under the cap
    heavy = MemoryEstimate.from_dict(refit(data, [TrialPeaks(batch_size=32, eval_batch_size=128,
                                                             eval_bytes=90 * MiB)]))
    assert heavy.eval.predict(128) >= 90 * MiB and heavy.eval_max_batch_size < 180
    assert heavy.eval.predict(heavy.eval_max_batch_size) <= 100 * MiB


def test_planner_goes_straight_to_a_near_boundary_once_the_activations_dominate():
    # c14 as measured: 758 KiB + 20.2 MiB/sample; the study tries at most the 51 training samples
    wide = lambda b: 758 * KiB + 20.2 * MiB * b  # noqa: E731
    step, measured = run_plan(wide, cap_bytes=4 * GiB, space_max=256, dataset_max=51)
    assert [b for b, _ in measured] == [2, 8, 51] and step.converged and step.boundary == 51
    # a far boundary still gets the intermediate size that checks the form in between
    _, far = run_plan(wide, cap_bytes=None, space_max=256)
    assert [b for b, _ in far] == [2, 8, 32, 256]
