"""``recommend`` returns the stored answer unfitted while the study it answered is unchanged.

The answer ``publish`` stores with its key (``recommender._stored``) is returned by ``recommend``
as it is when the same question (priority, constraints) is asked of the same finished trials and
study attributes with the same code; any change fits again. Either way the answer is the fit's,
to the byte of ``--json``."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from autobatch import records as R
from autobatch.recommender import answer_key, confirmed_key, publish, recommend, recommend_study
from tests.test_recommend import Law, make_study, make_trials

REPO = Path(__file__).resolve().parents[1]
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def fits(monkeypatch):
    """The fits made (calls of ``recommend_from_frame``, which every fit goes through)."""
    from autobatch.recommender import _answer

    calls: list[int] = []
    real = _answer.recommend_from_frame

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_answer, "recommend_from_frame", counted)
    return calls


def published(storage, name: str, **asked) -> tuple[optuna.Study, object]:
    """A study of 24 trials with its answer to ``asked`` published as ``tune`` does: the key
    taken before the fit."""
    study = make_study(storage=storage, name=name, n=24)
    key = answer_key(study, **asked)
    rec = recommend_study(study, **asked)
    publish(study, rec, key)
    return study, rec


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def where(request, tmp_path):
    """Where the study lives: Optuna's in-memory storage (the study itself is passed), SQLite,
    PostgreSQL (skipped when unreachable)."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'studies.db'}"
    return request.getfixturevalue("postgres_url")


def test_the_stored_answer_is_returned_unfitted_and_is_the_fit(where, fits):
    import uuid

    name = f"reuse-{uuid.uuid4().hex[:8]}"
    storage = None if where is None else _storage(where)
    try:
        study, rec = published(storage, name, max_memory="1GiB")
        fits.clear()
        reused = recommend(name, storage=study if where is None else where, max_memory=2**30)  # the same question
        assert fits == []
        fresh = recommend_study(study if where is None else optuna.load_study(study_name=name, storage=storage),
                                max_memory="1GiB")
        assert len(fits) == 1
        assert reused.export("json") == rec.export("json") == fresh.export("json")
        assert str(reused) == str(fresh)
    finally:
        if where is not None and where.startswith("postgresql"):
            optuna.delete_study(study_name=name, storage=storage)


def _storage(url: str):
    from autobatch.storage import open_storage

    return open_storage(url)


def _new_trial(study: optuna.Study) -> None:
    study.add_trial(make_trials(Law(), 25, seed=7)[-1])


def _new_verification(study: optuna.Study) -> None:
    study.set_user_attr(R.STUDY_VERIFICATION, {"runs": [{"batch_size": 32, "accumulation_steps": 1,
                                                         "lr_multiplier": 1.0, "value": 0.9}]})


def _edited_answer(study: optuna.Study) -> None:
    answer = study.user_attrs[R.STUDY_RECOMMENDATION]
    study.set_user_attr(R.STUDY_RECOMMENDATION, {**answer, "batch_size": 999})


def _unkeyed(study: optuna.Study) -> None:
    publish(study, recommend_study(study))  # no key: whoever stored it did not vouch for it


@pytest.mark.parametrize("change, asked", [
    (_new_trial, {}), (_new_verification, {}), (_edited_answer, {}), (_unkeyed, {}),
    (None, {"priority": "speed"}), (None, {"max_memory": "2GiB"}), (None, {"min_accuracy": 0.5}),
], ids=["new-trial", "new-verification", "edited-answer", "unkeyed", "other-priority", "other-memory-cap",
        "other-min-accuracy"])
def test_a_changed_study_or_question_is_fitted_again(tmp_path, fits, change, asked):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study, _ = published(url, "s")
    if change is not None:
        change(study)
    fits.clear()
    got = recommend("s", storage=url, **asked)
    assert len(fits) == 1
    assert got.export("json") == recommend_study(optuna.load_study(study_name="s", storage=url), **asked).export("json")


def test_the_budget_attributes_are_not_inputs(tmp_path, fits):
    """A resumed ``tune`` rewrites the deadline and the trial count: not inputs of the fit."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study, rec = published(url, "s")
    study.set_user_attr(R.STUDY_DEADLINE, 1e10)
    study.set_user_attr(R.STUDY_MAX_TRIALS, 99)
    fits.clear()
    assert recommend("s", storage=url).to_dict() == rec.to_dict() and fits == []


def test_confirmed_key_vouches_only_for_the_fit(tmp_path, fits):
    study = make_study(n=24)
    key = answer_key(study)
    fitted = recommend_study(study)
    fits.clear()
    assert confirmed_key(study, fitted, fitted, key) == key and fits == []        # nothing changed: no refit
    annotated = dataclasses.replace(fitted, verification_note="not verified: verification is off")
    assert confirmed_key(study, annotated, fitted, key) is None and fits == []     # tune's note: not the fit's,
    # and with the study as fitted a refit could only give ``fitted`` again: none is made
    _new_trial(study)
    assert confirmed_key(study, fitted, fitted, key) is None                       # a trial finished meanwhile


def test_tune_stores_an_answer_recommend_returns_unfitted(tmp_path):
    """A real ``tune`` (verified by default) keys its answer; the command then answers from it
    without loading scikit-learn, SciPy or pandas, and prints what a fit prints."""
    from autobatch.search import SearchSpace, TuneSettings
    from autobatch.tuning import tune

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    space = SearchSpace(batch_size_min=16, batch_size_max=128, lr_multiplier_min=0.5, lr_multiplier_max=2.0)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        tune(TuneSettings(model="mlp", dataset="digits", device="cpu", epochs=0.2, n_trials=6, storage=url,
                          study_name="t", baselines=False, space=space, noise_probe=False))
    study = optuna.load_study(study_name="t", storage=url)
    assert study.user_attrs[R.STUDY_VERIFICATION].get("values"), "the answer was verified"
    assert study.user_attrs[R.STUDY_RECOMMENDATION_KEY] is not None
    code = ("import sys; from autobatch import cli; code = cli.main(sys.argv[1:]); "
            "assert not {'sklearn', 'scipy', 'pandas', 'torch'} & set(sys.modules), 'fitted'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "recommend", "--study-name", "t", "--storage", url, "--json"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == recommend_study(study).export("json")
