"""``autobatch report``: files written from a real stored study, and the data behind each plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.memory import MemoryModel
from autobatch.recommender import recommend, trials_frame
from autobatch.report import (MiB, pareto_mask, plot_accuracy_map, plot_curves, plot_memory,
                              plot_tradeoff, write_report)
from autobatch.search import StudySpec
from tests.conftest import capped_study, run_cli

STUDY = "report-demo"
FILES = ("tradeoff.png", "memory.png", "accuracy_heatmap.png", "curves.png", "noise_scale.png", "steps_to_target.png",
         "trials.csv", "summary.md")


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[str, Path]:
    where = tmp_path_factory.mktemp("report")
    return capped_study(where, STUDY), where


@pytest.fixture(scope="module")
def study(stored) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=stored[0])


def test_report_cli_writes_every_file(stored):
    url, where = stored
    done = run_cli("report", "--study-name", STUDY, "--storage", url, "--out", "out", cwd=where)
    assert done.returncode == 0, done.stderr
    listed = [Path(line) for line in done.stdout.split()]
    assert [p.name for p in listed] == list(FILES)
    for name in FILES:
        path = where / "out" / name
        assert path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (where / "out" / "summary.md").read_text()
    assert f"# autobatch report: {STUDY}" in summary
    assert "autobatch recommendation" in summary          # Recommendation.markdown()
    assert "folk-default-32" in summary                   # a baseline against the best
    assert all(f"({name})" in summary for name in FILES if name.endswith(".png"))
    assert len((where / "out" / "trials.csv").read_text().strip().splitlines()) == 11  # header + 10


def test_report_missing_study_is_one_line_exit_2(stored):
    url, where = stored
    done = run_cli("report", "--study-name", "nope", "--storage", url, "--out", "x", cwd=where)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no study named 'nope'" in done.stderr
    assert STUDY in done.stderr  # names the studies that exist
    assert not (where / "x").exists()


@pytest.mark.parametrize("out, names", [("a-file.txt", "a-file.txt is a file, not a folder"),
                                        ("a-file.txt/sub", "a-file.txt is a file, not a folder"),
                                        ("/proc/nope/report", "/proc/nope cannot be created")])
def test_report_to_an_unusable_folder_is_one_line_exit_2(stored, out, names):
    """An --out that is a file, lies under a file or cannot be made: one line naming the path and
    what is wrong, exit 2, no traceback (before: FileExistsError / FileNotFoundError, exit 1)."""
    url, where = stored
    (where / "a-file.txt").write_text("mine\n")
    done = run_cli("report", "--study-name", STUDY, "--storage", url, "--out", out, cwd=where)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    last = done.stderr.strip()
    assert last.startswith(f"autobatch: error: report folder {out}: {names}") and "--out" in last, done.stderr
    assert (where / "a-file.txt").read_text() == "mine\n"


def test_tradeoff_points_front_recommendation_baselines(study, stored):
    df = trials_frame(study)
    rec = recommend(STUDY, stored[0])
    fig, data = plot_tradeoff(df, rec)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(data["number"]) == [t.number for t in completed]
    by_number = {t.number: t for t in completed}
    for n, t, a in zip(data["number"], data["epoch_time_s"], data["accuracy"]):
        assert t == pytest.approx(by_number[n].user_attrs[R.EPOCH_TIME_S])
        assert a == pytest.approx(by_number[n].value)
    # what is drawn is what is returned: the colour-mapped scatter holds the trial points
    scatter = next(c for c in fig.axes[0].collections if c.get_array() is not None)
    assert np.allclose(scatter.get_offsets(), np.column_stack([data["epoch_time_s"], data["accuracy"]]))
    # the front: non-dominated, and every other trial dominated by a front point
    front = set(data["front_number"])
    points = list(zip(data["number"], data["epoch_time_s"], data["accuracy"]))
    for n, t, a in points:
        dominated = any(t2 <= t and a2 >= a and (t2 < t or a2 > a) for _, t2, a2 in points)
        assert dominated == (n not in front), n
    assert list(data["front_epoch_time_s"]) == sorted(data["front_epoch_time_s"])
    assert data["recommendation"] == (rec.predicted_epoch_time_s, rec.predicted_accuracy)
    baselines = {t.user_attrs[R.BASELINE] for t in completed if R.BASELINE in t.user_attrs}
    assert set(data["baselines"]) == baselines and baselines


def test_memory_plot_fit_cap_probes_and_pruned(study):
    df = trials_frame(study)
    mm = study.user_attrs[R.STUDY_MEMORY_MODEL]
    _, data = plot_memory(df, mm)
    model = MemoryModel.from_dict(mm)
    expected = [model.predict(int(b)) / MiB for b in data["fit_batch"]]
    assert np.allclose(data["fit_peak_mib"], expected)
    assert data["cap_mib"] == mm["cap_bytes"] / MiB == 3.0
    probes = [p for p in mm["points"] if p["peak_bytes"]]
    assert list(data["probe_batch"]) == [p["batch_size"] for p in probes]
    assert np.allclose(data["probe_peak_mib"], [p["peak_bytes"] / MiB for p in probes])
    measured = [t for t in study.trials if t.user_attrs.get(R.MEASURED_PEAK_BYTES)]
    assert sorted(data["trial_batch"]) == sorted(t.user_attrs[R.BATCH_SIZE] for t in measured)
    over = [t for t in study.trials if t.user_attrs.get(R.STOP_REASON) == R.STOP_OVER_MEMORY]
    assert over, "seed 5 was chosen to sample over-cap batch sizes"
    assert sorted(data["over_cap_batch"]) == sorted(t.user_attrs[R.BATCH_SIZE] for t in over)
    assert all(data["over_cap_predicted_mib"] > data["cap_mib"])


def test_accuracy_map_and_curves(study):
    df = trials_frame(study)
    spec = StudySpec.from_dict(study.user_attrs[R.STUDY_SPEC])
    _, grid = plot_accuracy_map(df, spec)
    completed = {t.number: t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert sorted(grid["number"]) == sorted(completed)
    for n, lr, acc in zip(grid["number"], grid["learning_rate"], grid["accuracy"]):
        assert lr == pytest.approx(completed[n].user_attrs[R.LEARNING_RATE])
        assert acc == pytest.approx(completed[n].value)

    fig, curves = plot_curves(df, list(spec.eval_points))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training samples seen"
    assert list(ax.get_xticks()) == list(spec.eval_points)
    with_curve = {t.number: t for t in study.trials if t.user_attrs.get(R.CURVE)}
    assert set(curves["curves"]) == set(with_curve)
    for n, (x, y) in curves["curves"].items():
        steps = sorted(with_curve[n].intermediate_values)  # reported at samples seen
        assert list(x) == steps and set(steps) <= set(spec.eval_points)
        assert np.allclose(y, [with_curve[n].intermediate_values[s] for s in steps])
        if n in completed:
            assert list(x) == list(spec.eval_points)
    assert sorted(curves["pruned"]) == sorted(n for n in with_curve if n not in completed)
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == len(curves["pruned"])


def test_pareto_mask_ties_and_domination():
    t = np.array([1.0, 1.0, 2.0, 3.0, 0.5])
    a = np.array([0.8, 0.9, 0.9, 0.95, 0.1])
    assert list(pareto_mask(t, a)) == [False, True, False, True, True]


def test_study_without_completed_trials_and_vanilla_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'v.db'}"
    empty = optuna.create_study(study_name="empty", storage=url, direction="maximize")
    trial = empty.ask()
    empty.tell(trial, state=optuna.trial.TrialState.PRUNED)
    with pytest.raises(AutobatchError, match="no completed trial"):
        write_report("empty", url, tmp_path / "a", say=lambda s: None)

    plain = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    plain.optimize(lambda tr: tr.suggest_float("x", 0, 1), n_trials=3)
    notes: list[str] = []
    paths = write_report("plain", url, tmp_path / "b", say=notes.append)
    assert [p.name for p in paths] == list(FILES)
    assert any("without a recommendation" in n for n in notes)
