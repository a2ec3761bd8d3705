"""Verification inside tune's budget: the answer re-trained with fresh seeds, stored, returned."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from autobatch import records as R
from autobatch.recommender import Recommendation, recommend_study
from autobatch.search import SearchSpace, TrialTimes, TuneSettings, plan_train_samples, verification_runs, \
    verification_seconds
from autobatch.tuning import tune
from autobatch.tuning._verify import has_batchnorm, verdict

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_plan_reserves_one_run_or_two_when_the_budget_allows():
    assert verification_runs(6) == 1 and verification_runs(None) == 2 and verification_runs(40) == 2
    times = TrialTimes(a=0.01, c=0.001, eval_per_sample=1e-4, start_s=0.5)
    plain = plan_train_samples(seconds_left=100, seconds_per_sample=0.001, train_size=10_000, n_trials=10)
    reserved = plan_train_samples(seconds_left=100, seconds_per_sample=0.001, train_size=10_000, n_trials=10,
                                  reserved_runs=1)
    assert reserved < plain                          # the time is shared with the verification run
    assert verification_seconds(times, [8, 64], 1000, 100) == pytest.approx(
        1.25 * times.seconds(8, 1000, 100))          # the slowest micro-batch, SAFETY times over


def test_the_verification_reserve_never_takes_more_than_half_the_time_left():
    from autobatch.search import search_deadline

    assert search_deadline(deadline=1100.0, now=1000.0, reserve_s=20.0) == 1080.0   # room for both: all of it
    assert search_deadline(deadline=1090.0, now=1000.0, reserve_s=70.0) == 1045.0   # slow probes: half each
    assert search_deadline(deadline=990.0, now=1000.0, reserve_s=5.0) == 990.0      # past it: nothing taken
    assert search_deadline(deadline=1100.0, now=1000.0, reserve_s=0.0) == 1100.0    # no verification planned


def test_verdict_says_where_the_measurements_fell():
    assert verdict([0.95], (0.94, 0.97)) == "inside"
    assert verdict([0.93, 0.92], (0.94, 0.97)) == "below"
    assert verdict([0.99], (0.94, 0.97)) == "above"
    assert verdict([0.93, 0.97], (0.94, 0.98)) == "outside"
    assert verdict([], (0.9, 1.0)) is None and verdict([0.9], None) is None


def test_worse_than_the_interval_follows_the_metric_direction():
    from autobatch.tuning._verify import worse

    assert worse("below", "maximize") and not worse("above", "maximize")      # an accuracy came out lower
    assert worse("above", "minimize") and not worse("below", "minimize")      # a loss came out higher
    assert not worse("inside", "maximize") and not worse("outside", "minimize") and not worse(None, "maximize")


def test_has_batchnorm():
    assert has_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))
    assert not has_batchnorm(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)))


def test_verification_line_says_plainly_when_the_prediction_did_not_hold():
    rec = Recommendation(study_name="s", batch_size=32, learning_rate=0.1, accumulation_steps=1,
                         effective_batch_size=32, lr_multiplier=1.0, priority="balanced", predicted_metric=0.962,
                         metric_interval=(0.961, 0.964), predicted_epoch_time_s=1.0, epoch_time_interval=(0.9, 1.1),
                         predicted_peak_bytes=None, peak_bytes_interval=None, pareto_front=(), trials=(0,),
                         best_trial=0, rationale="r", constraints={})
    assert rec.verification_line() is None
    held = dataclasses.replace(rec, verified_metric=0.962, verified_values=(0.962,), verified_seeds=(7,),
                               verification_verdict="inside")
    assert held.verification_line() == "verified: 96.2% (seed 7), predicted 96.2% [96.1%, 96.4%]"
    missed = dataclasses.replace(rec, verified_metric=0.952, verified_values=(0.952,), verified_seeds=(7,),
                                 verification_verdict="below")
    assert "below the predicted interval: the prediction did not hold" in missed.verification_line()
    assert Recommendation.from_dict(missed.to_dict()) == missed
    why = dataclasses.replace(rec, verification_note="not verified: the budget has 0s left")
    assert why.verification_line() == "not verified: the budget has 0s left"
    # a held-out score below the interval is said to be the fairer guess; one inside it is not
    low = dataclasses.replace(held, verified_holdout_metric=0.93, verified_holdout_samples=108)
    assert "93.0% on 108 held-out" in low.verification_line() and "fairer guess" in low.verification_line()
    inside = dataclasses.replace(held, verified_holdout_metric=0.962, verified_holdout_samples=108)
    assert "fairer guess" not in inside.verification_line()


def test_tune_verifies_its_answer_with_fresh_seeds(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    settings = TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.3, n_trials=6, storage=url,
                            study_name="v", space=SearchSpace(batch_size_min=16, batch_size_max=64,
                                                              accumulation_steps=(1, 2)), pruner="none")
    answer = tune(settings).answer
    study = optuna.load_study(study_name="v", storage=url)
    assert len(study.trials) == 6                                   # --n-trials stays the search's count
    stored = study.user_attrs[R.STUDY_VERIFICATION]
    assert len(stored["values"]) == 1 == len(stored["runs"])        # 6 planned trials: one run reserved
    assert (stored["batch_size"], stored["accumulation_steps"]) == (answer["batch_size"],
                                                                     answer["accumulation_steps"])
    trial_seeds = {study.user_attrs[R.STUDY_SPEC]["seed"] + t.number for t in study.trials}
    assert stored["seeds"][0] not in trial_seeds and stored["seconds"] > 0     # a fresh seed, timed
    assert answer["verified_values"] == stored["values"] and answer["verification_verdict"] in (
        "inside", "below", "above")
    assert answer["verification"].startswith("verified: ")
    repeats = [t for t in study.trials if t.user_attrs.get(R.REPEAT)]
    assert len(repeats) == 1                                         # the deliberate early repeat
    rec = Recommendation.from_dict(study.user_attrs[R.STUDY_RECOMMENDATION])
    assert rec.verified_values == tuple(stored["values"]) and "Verified: " in rec.markdown()
    # digits' 359 validation samples: 108 held out of every trial, scored by the verification only
    spec = study.user_attrs[R.STUDY_SPEC]
    assert spec["verify_holdout"] == 108 and spec["val_size"] == 251 and stored["holdout_samples"] == 108
    assert 0 <= stored["holdout_values"][0] <= 1 and rec.verified_holdout_samples == 108
    assert "108 held-out validation samples" in answer["verification"]
    # recommend later: the stored verification beside the prediction it checked; the runs are repeats
    later = recommend_study(study)
    if (later.batch_size, later.accumulation_steps) == (rec.batch_size, rec.accumulation_steps):
        assert later.verified_values == rec.verified_values and later.predicted_metric == rec.predicted_metric
    # a complete study asked again is not re-trained: the same verification is returned
    again = tune(settings).answer
    assert optuna.load_study(study_name="v", storage=url).user_attrs[R.STUDY_VERIFICATION]["runs"] == stored["runs"]
    assert again["verified_values"] == answer["verified_values"]


def test_verification_runs_are_repeats_for_the_seed_noise():
    from autobatch.recommender._calibration import setting_key
    from autobatch.recommender._fit import repeat_noise, verification_repeats

    stored = {"runs": [{"batch_size": 32, "accumulation_steps": 1, "lr_multiplier": 2.0, "value": 0.90},
                       {"batch_size": 32, "accumulation_steps": 1, "lr_multiplier": 2.0, "value": 0.94}]}
    extra = verification_repeats(stored)
    assert extra == [(setting_key(32, 1, 2.0), 0.90), (setting_key(32, 1, 2.0), 0.94)]
    import pandas as pd
    trials = pd.DataFrame({"batch_size": [32, 64], "accumulation_steps": [1, 1], "lr_multiplier": [2.0, 1.0],
                           "val_metric": [0.92, 0.8]})
    noise = repeat_noise(trials, extra)              # 0.92 (trial) with 0.90 and 0.94 (verification)
    assert noise.dof == 2 and noise.variance == pytest.approx(((0.02 ** 2) * 2) / 2)
    assert repeat_noise(trials) is None


def test_holdout_split_is_deterministic_disjoint_and_only_where_the_data_allows():
    from autobatch.workloads import holdout_size, load_workload, split_holdout

    assert holdout_size(299) == 0 and holdout_size(359) == 108 and holdout_size(1000) == 300
    digits = load_workload("digits", seed=0)
    select, held = split_holdout(digits, 108, seed=0)
    again, held_again = split_holdout(digits, 108, seed=0)
    assert len(select.val) == 251 and len(held) == 108 and len(select.train) == len(digits.train)
    assert torch.equal(held.tensors[0], held_again.tensors[0]) and torch.equal(select.val.tensors[0], again.val.tensors[0])
    rows = lambda ds: {tuple(x.flatten().tolist()) for x in ds.tensors[0]}  # noqa: E731
    assert not rows(select.val) & rows(held) and len(rows(select.val) | rows(held)) == len(rows(digits.val))
    assert split_holdout(digits, 0, seed=0) == (digits, None)
    with pytest.raises(ValueError):
        split_holdout(digits, len(digits.val), seed=0)


def test_study_file_turns_verification_off(tmp_path):
    from autobatch.search import build_settings

    path = tmp_path / "study.toml"
    path.write_text('model = "mlp"\nverify_runs = 0\n')
    assert build_settings(path, {}).verify_runs == 0
    assert TuneSettings().verify_runs is None                      # the plan's one or two
    with pytest.raises(Exception, match="verify_runs"):
        TuneSettings(verify_runs=9)


# --- a verification that contradicts the prediction re-ranks the answer ----------------------------

@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """A real 6-trial study (mlp on digits), tuned without verification: the recommender's input."""
    path = tmp_path_factory.mktemp("rerank") / "s.db"
    tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.3, n_trials=6, storage=f"sqlite:///{path}",
                      study_name="r", space=SearchSpace(batch_size_min=16, batch_size_max=64), pruner="none",
                      verify_runs=0))
    return path


def _contradicting(tiny_study, tmp_path):
    """A copy of the tiny study and a verification context that trains on scrambled labels: the
    re-training measures any setting near chance, far below its interval (a forced contradiction;
    the recommender and the trainer run for real)."""
    import shutil

    from autobatch.search import StudySpec
    from autobatch.tuning._objective import TrialContext
    from autobatch.workloads import load_workload, split_holdout
    from torch.utils.data import TensorDataset

    for part in tiny_study.parent.glob("s.db*"):  # the database and its write-ahead log
        shutil.copy(part, tmp_path / part.name)
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path / 's.db'}")
    spec = dataclasses.replace(StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC]), verify_runs=1)
    select, _ = split_holdout(load_workload("digits", seed=spec.seed), spec.verify_holdout, spec.seed)
    x, y = select.train.tensors
    scrambled = dataclasses.replace(select, train=TensorDataset(x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]))
    return study, TrialContext(spec=spec, workload=scrambled, device=torch.device("cpu"), num_workers=0)


def test_a_contradicting_verification_re_ranks_and_verifies_the_new_winner(tiny_study, tmp_path):
    from autobatch.recommender import same_setting
    from autobatch.tuning._verify import MAX_RERANKS, verify_answer

    study, ctx = _contradicting(tiny_study, tmp_path)
    trials = [t.number for t in study.trials]
    first = recommend_study(study, priority="accuracy")  # no timing in the ranking: the same path each run
    answer = verify_answer(study, first, ctx)
    stored = study.user_attrs[R.STUDY_VERIFICATION]
    assert [t.number for t in optuna.load_study(study_name="r", storage=study._storage).trials] == trials
    assert stored["runs"][0]["contradicted"] and same_setting(first, stored["runs"][0])
    assert answer.reranked_from[0]["verdict"] == "below" and same_setting(first, answer.reranked_from[0])
    assert answer.reranked_from[0]["values"] == [stored["runs"][0]["value"]] and stored["runs"][0]["value"] < 0.5
    assert not same_setting(answer, answer.reranked_from[0])      # the measurement moved the answer
    # each new winner is verified in turn, at most MAX_RERANKS more. Three endings (which one
    # depends on how wide a 6-trial study's intervals are around chance): a new winner holds and
    # is the verified answer; a contradicted setting still wins once its measurement is fitted;
    # or every one missed and the last winner is said to be unverified
    contradicted = [r for r in stored["runs"] if r["contradicted"]]
    assert 1 <= len(contradicted) <= MAX_RERANKS + 1
    if answer.verified_values and answer.verification_verdict == "inside":
        assert len(answer.reranked_from) == len(contradicted) == len(stored["runs"]) - 1
    elif answer.verified_values:
        assert "the setting still wins" in answer.verification_note
        assert same_setting(answer, contradicted[-1]) and len(answer.reranked_from) == len(contradicted) - 1
    else:
        assert len(answer.reranked_from) == MAX_RERANKS + 1 == len(stored["runs"]) == len(contradicted)
        assert answer.verification_note.startswith("not verified: re-ranked after the verification of batch")
        assert "(not verified)" in str(answer)
    assert "re-ranked: batch" in answer.markdown().lower()
    # the verification runs are observations, not trials: the refit rests on the same trials
    later = recommend_study(study, priority="accuracy")
    assert same_setting(later, answer.to_dict()) and later.reranked_from == answer.reranked_from
    assert later.verification_note == answer.verification_note
    assert later.diagnostics["accuracy"]["verification_observations"] == len(contradicted)  # runs inside stay repeats
    assert set(later.trials) <= set(trials) and later.diagnostics["accuracy"]["trials"] == first.diagnostics["accuracy"]["trials"]
    assert Recommendation.from_dict(later.to_dict()) == later


def test_without_time_for_another_run_the_re_ranked_winner_is_named_unverified(tiny_study, tmp_path, monkeypatch):
    import time

    from autobatch.recommender import same_setting
    from autobatch.tuning import _verify

    study, ctx = _contradicting(tiny_study, tmp_path)
    first = recommend_study(study)
    calls = []
    real = _verify._run_seconds
    # the first run fits in the budget, any later one does not (the budget's clock is real)
    monkeypatch.setattr(_verify, "_run_seconds", lambda *a: calls.append(a) or (real(*a) if len(calls) == 1 else 1e6))
    answer = _verify.verify_answer(study, first, ctx, end=time.time() + 600)
    stored = study.user_attrs[R.STUDY_VERIFICATION]
    assert len(stored["runs"]) == 1 and stored["runs"][0]["contradicted"]
    assert not same_setting(answer, first.to_dict()) and not answer.verified_values
    assert answer.verification_note.startswith("not verified: re-ranked after the verification of batch "
                                               f"{first.batch_size} x {first.accumulation_steps} came out below")
    assert "give the study more budget" in answer.verification_note
    assert same_setting(answer, stored["answer"]) and same_setting(recommend_study(study), answer.to_dict())
