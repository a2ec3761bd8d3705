"""``autobatch dashboard``: optuna-dashboard served on a real study, its JSON API, the page in
headless Chromium, the recommendation note, and the user errors (port in use, empty storage)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from html import unescape
from pathlib import Path

import optuna
import pytest
from optuna_dashboard._note import get_note_from_system_attrs

from autobatch import dashboard
from autobatch import records as R
from autobatch.errors import AutobatchError
from autobatch.recommender import Recommendation
from tests.conftest import REPO, REQUIRE_ALL, capped_study, run_cli

STUDY = "dash-demo"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[str, Path]:
    where = tmp_path_factory.mktemp("dashboard")
    return capped_study(where, STUDY), where


@pytest.fixture(scope="module")
def served(stored):
    """``autobatch dashboard`` in a subprocess, as a user starts it; Ctrl-C at the end."""
    url, where = stored
    port = free_port()
    log = (where / "dashboard.log").open("w+")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("AUTOBATCH_STORAGE", None)
    proc = subprocess.Popen([sys.executable, "-m", "autobatch", "dashboard", "--storage", url,
                             "--port", str(port)], cwd=where, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get_json(f"{base}/api/studies")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"dashboard did not start: {Path(log.name).read_text()}")
            time.sleep(0.3)
    yield base, proc, Path(log.name)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_api_lists_study_trials_attrs_curves_and_constraints(served, stored):
    base, _, _ = served
    summaries = get_json(f"{base}/api/studies")["study_summaries"]
    [summary] = [s for s in summaries if s["study_name"] == STUDY]
    detail = get_json(f"{base}/api/studies/{summary['study_id']}")
    study = optuna.load_study(study_name=STUDY, storage=stored[0])
    eval_points = study.user_attrs[R.STUDY_SPEC]["eval_points"]
    assert len(detail["trials"]) == len(study.trials) == 10
    over_memory = 0
    for trial in detail["trials"]:
        attrs = {a["key"]: json.loads(a["value"]) if a["value"].startswith(("[", "{")) else a["value"]
                 for a in trial["user_attrs"]}
        assert {R.BATCH_SIZE, R.LEARNING_RATE, R.STOP_REASON} <= set(attrs)
        steps = [v["step"] for v in trial["intermediate_values"]]
        if trial["state"] == "Complete":
            assert steps == eval_points                    # the samples-seen axis
            assert [p[0] for p in attrs[R.CURVE]] == eval_points
        # optuna-dashboard 0.21 reads the legacy "constraints" system attr: feasible <=> all <= 0
        feasible = all(c <= 0 for c in trial["constraints"])
        assert trial["constraints"], trial["number"]
        if attrs[R.STOP_REASON] == R.STOP_OVER_MEMORY:
            over_memory += 1
            assert not feasible and steps == [] and trial["state"] == "Pruned"
        else:
            assert feasible
    assert over_memory >= 1


def test_metric_named_params_and_measurements_readable(stored):
    """What the dashboard shows: the metric by name (not "Objective 0"), the micro-batch and the
    accumulation steps as parameters in their own units, the measurements in units."""
    study = optuna.load_study(study_name=STUDY, storage=stored[0])
    assert study.metric_names == ["accuracy"]
    for t in study.trials:
        assert set(t.params) == {R.PARAM_BATCH_SIZE, R.PARAM_ACCUM, R.PARAM_LR_MULTIPLIER}
        assert t.params[R.PARAM_BATCH_SIZE] == t.user_attrs[R.BATCH_SIZE] in (8, 16, 32, 64, 128, 256)
        assert t.params[R.PARAM_ACCUM] == t.user_attrs[R.ACCUMULATION_STEPS]
        assert t.user_attrs[R.READABLE_STOP].startswith(t.user_attrs[R.STOP_REASON])
        assert t.user_attrs[R.READABLE_LR].startswith(f"{t.user_attrs[R.LEARNING_RATE]:.4g} (multiplier ")
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.user_attrs[R.READABLE_THROUGHPUT].endswith(" samples/s")
            assert t.user_attrs[R.READABLE_EPOCH_TIME].endswith(" s")
            assert " measured, " in t.user_attrs[R.READABLE_PEAK] and t.user_attrs[R.READABLE_PEAK].endswith("predicted")


def _refreshed(log: Path, timeout: float = 120) -> str:
    """The dashboard's log once the background refresh has said its line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        if "recommendation notes refreshed" in text:
            return text
        time.sleep(0.3)
    pytest.fail(f"notes not refreshed within {timeout:.0f}s: {log.read_text()}")


def test_note_and_recommendation_attr_refreshed(served, stored):
    log = _refreshed(served[2])
    study = optuna.load_study(study_name=STUDY, storage=stored[0])
    rec = Recommendation.from_dict(study.user_attrs[R.STUDY_RECOMMENDATION])
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    note = get_note_from_system_attrs(system_attrs, None)
    assert note["version"] >= 1 and note["body"] == rec.markdown()
    assert f"recommendation notes refreshed: {STUDY}" in log
    assert f"optuna-dashboard on {served[0]}/ for {stored[0]}" in log


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    if not CHROMIUM:
        message = "chromium not installed (apt-get install -y chromium)"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=10000", *args],
        capture_output=True, text=True, timeout=90)


def _text(html: str) -> str:
    """The page's visible text, whitespace collapsed."""
    html = re.sub(r"<(style|script)\b.*?</\1>", " ", html, flags=re.S)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_page_in_headless_chromium(served, stored, tmp_path):
    """The pages as a browser renders them: the note, the metric's name on the history plot, the
    parameters in real units and the readable measurements; screenshots in test-artifacts/."""
    base, _, log = served
    _refreshed(log)
    study_id = get_json(f"{base}/api/studies")["study_summaries"][0]["study_id"]
    page = chromium("--dump-dom", f"{base}/dashboard/studies/{study_id}/note", tmp_path=tmp_path)
    assert STUDY in page.stdout, page.stderr[-2000:]                 # the React app rendered
    assert "autobatch recommendation" in page.stdout                 # and the note with it
    history = _text(chromium("--dump-dom", f"{base}/dashboard/studies/{study_id}", tmp_path=tmp_path).stdout)
    assert "y Axis accuracy" in history and "Objective 0" not in history, history[:3000]
    assert re.search(r"Params = \[batch_size: \d+, lr_multiplier: [\d.e-]+, accumulation_steps: \d+\]", history)
    trials = _text(chromium("--dump-dom", f"{base}/dashboard/studies/{study_id}/trials", tmp_path=tmp_path).stdout)
    first = optuna.load_study(study_name=STUDY, storage=stored[0]).trials[0]
    assert (f"Parameter batch_size {first.params[R.PARAM_BATCH_SIZE]} lr_multiplier "
            f"{first.params[R.PARAM_LR_MULTIPLIER]}") in trials, trials[:3000]
    assert f"{R.READABLE_PEAK} {first.user_attrs[R.READABLE_PEAK]}" in trials
    ARTIFACTS.mkdir(exist_ok=True)
    for name, path in (("dashboard-study.png", ""), ("dashboard-trials.png", "/trials"),
                       ("dashboard-note.png", "/note")):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", "--window-size=1280,1400", f"{base}/dashboard/studies/{study_id}{path}",
                 tmp_path=tmp_path)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")


def test_ctrl_c_stops_cleanly(served):
    """Runs after the tests above (file order): it stops the module's server."""
    _, proc, log = served
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0
    assert "dashboard stopped" in log.read_text()


def test_port_in_use_is_one_line_exit_2(stored):
    url, where = stored
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("dashboard", "--storage", url, "--port", str(port), cwd=where, timeout=60)
    assert done.returncode == 2
    assert done.stderr == f"autobatch: error: port {port} on 127.0.0.1 is in use; pass --port\n"


def test_storage_without_studies_is_exit_2(tmp_path):
    missing = tmp_path / "none" / "missing.db"
    done = run_cli("dashboard", "--storage", f"sqlite:///{missing}", "--port", str(free_port()),
                   cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no autobatch studies in" in done.stderr
    assert not missing.parent.exists()  # nothing created on the way
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(empty)  # the schema, but no study
    with pytest.raises(AutobatchError, match="no autobatch studies in"):
        dashboard.open_existing(empty)


def test_serves_before_the_notes_are_refreshed(stored, monkeypatch):
    """The notes are refreshed in the background: the server is up while they are recomputed."""
    refreshing, serving = threading.Event(), threading.Event()

    def slow_refresh(backend, say):
        refreshing.set()
        assert serving.wait(30), "the server did not start while the notes were being refreshed"
        say("recommendation notes refreshed: (slow)")

    class Server:
        def serve_forever(self):
            serving.set()
            assert refreshing.wait(30)
            raise KeyboardInterrupt

        def server_close(self):
            pass

    monkeypatch.setattr(dashboard, "bind", lambda host, port, app: Server())
    monkeypatch.setattr(dashboard, "refresh_notes", slow_refresh)
    lines: list[str] = []
    dashboard.serve(stored[0], port=9, say=lines.append)
    assert lines[0].startswith("optuna-dashboard on") and "dashboard stopped" in lines


def test_non_loopback_warns(stored, monkeypatch):
    """The flow of serve() without a real server: lines said, Ctrl-C returns cleanly."""

    class Server:
        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            self.closed = True

    server = Server()
    monkeypatch.setattr(dashboard, "bind", lambda host, port, app: server)
    monkeypatch.setattr(dashboard, "refresh_notes", lambda backend, say: [])
    lines: list[str] = []
    dashboard.serve(stored[0], host="0.0.0.0", port=9, say=lines.append)
    assert lines[0].startswith("optuna-dashboard on http://0.0.0.0:9/ for sqlite:")
    assert "no authentication" in lines[1] and lines[-1] == "dashboard stopped"
    assert server.closed
    assert dashboard.is_loopback("127.0.0.1") and dashboard.is_loopback("::1")
    assert dashboard.is_loopback("localhost") and not dashboard.is_loopback("example.org")
