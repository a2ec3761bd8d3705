"""Shared fixtures. PostgreSQL tests read AUTOBATCH_TEST_POSTGRES; with AUTOBATCH_REQUIRE_ALL=1
(as .ci/run sets) an unreachable PostgreSQL fails them instead of skipping."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("AUTOBATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_ALL = os.environ.get("AUTOBATCH_REQUIRE_ALL") == "1"

torch.set_num_threads(1)


def pytest_collection_finish(session) -> None:
    """For the tests that probe or ``tune`` in this process: everything the collection imported
    (torch's ``_dynamo`` too, which the first optimizer imports) moves to the garbage collector's
    permanent generation (``gc.freeze``), so the memory probe's ``gc.collect`` after each
    measurement scans only what a test made. Only the pytest process: frozen objects are never
    finalized, so the CLI (whose storage connections a freeze would keep open) does not do this."""
    import torch._dynamo  # noqa: F401

    gc.freeze()


@pytest.fixture(autouse=True)
def _fresh_accuracy_fits():
    """No test takes a fitted accuracy model another test left (``AccuracyModel.fit`` reuses
    the fitted state of the same data in one process; a test may have patched the fit)."""
    accuracy = sys.modules.get("autobatch.recommender._accuracy")
    if accuracy is not None:
        accuracy.forget_fits()


# A tune in a test that is not about them skips the gradient-noise probe and the verification
# re-training (each at least seconds); tests/test_verify.py and tests/test_critical_batch.py keep them.
LEAN = ("--no-verify", "--no-noise-probe")
LEAN_SETTINGS = {"verify_runs": 0, "noise_probe": False}


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    full_env.pop("AUTOBATCH_STORAGE", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "autobatch", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


@pytest.fixture
def postgres_url() -> str:
    """The test PostgreSQL; skipped when unreachable, failed instead under AUTOBATCH_REQUIRE_ALL."""
    import sqlalchemy

    from autobatch.storage import resolve_url

    try:
        engine = sqlalchemy.create_engine(resolve_url(POSTGRES_URL))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any connection failure
        message = f"PostgreSQL at {POSTGRES_URL} unreachable: {exc}"
        if REQUIRE_ALL:
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def drop_study(url: str, name: str) -> None:
    """Delete the study ``name`` from ``url``'s storage if it is there (a test's clean-up)."""
    import optuna

    from autobatch.storage import resolve_url

    try:
        optuna.delete_study(study_name=name, storage=resolve_url(url))
    except KeyError:
        pass


def capped_study(where: Path, name: str) -> str:
    """A real study made by the CLI: 10 trials of small_cnn on digits under a 3 MiB cap. Seed 5
    samples batch sizes 128 and 256 early, so some trials are pruned as over the cap before
    training (the range is given, so the search is not centred on the critical batch and keeps
    sizes over the cap). Returns its storage URL."""
    url = f"sqlite:///{where / 'studies.db'}"
    done = run_cli("tune", "--model", "small_cnn", "--dataset", "digits", "--epochs", "0.5", *LEAN,
                   "--n-trials", "10", "--max-memory", "3MiB", "--seed", "5", "--batch-size-max", "256",
                   "--storage", url, "--study-name", name, cwd=where)
    assert done.returncode == 0, done.stderr
    return url
