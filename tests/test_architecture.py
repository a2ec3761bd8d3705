"""The package's shape: layer contracts (import-linter), module sizes, the private Optuna
attributes autobatch relies on, and the torch-free import of the public API."""

import ast
import subprocess
import sys
from pathlib import Path

import optuna

from tests.conftest import REPO

PACKAGE = REPO / "autobatch"
MAX_LINES = 400


def test_import_contracts_hold():
    """Layers (cli -> stages -> optuna/torch), no cycles between siblings, private modules kept
    private: the contracts in pyproject.toml, checked by import-linter itself."""
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_modules_stay_small_or_say_why():
    """A module over MAX_LINES lines names its reason in its docstring ("Over 400 lines: ...")."""
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > MAX_LINES:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if f"Over {MAX_LINES} lines" not in doc:
                too_long.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
    assert not too_long, too_long


def test_private_optuna_attributes_are_still_there():
    """autobatch._optuna_internals reads these; an Optuna upgrade that moves them fails here."""
    from autobatch._optuna_internals import backend, study_id, trial_id

    study = optuna.create_study()
    trial = study.ask()
    assert isinstance(backend(study), optuna.storages.BaseStorage)
    assert backend(study).get_study_name_from_id(study_id(study)) == study.study_name
    assert backend(study).get_trial(trial_id(trial)).number == trial.number
    assert trial_id(study.trials[0]) == trial_id(trial)


def test_public_api_imports_no_torch():
    code = ("import sys; from autobatch import recommend, Recommendation; "
            "import autobatch.search, autobatch.recommender, autobatch.storage, autobatch.records; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(recommend.__module__)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "autobatch.recommender._api"


def test_reading_commands_import_no_torch(tmp_path):
    """``import autobatch.cli`` and the commands that only read a study (``recommend``,
    ``studies``, ``show``) never import torch: their start-up stays that of optuna + the
    trade-off model (a structural check, not a timing). ``recommend`` answering with the stored
    answer (published with its key, as ``tune`` does) imports no scikit-learn, SciPy or pandas
    either; asked another question, it fits."""
    from autobatch.recommender import answer_key, publish, recommend_study
    from tests.test_recommend import make_study

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = make_study(storage=url, n=24)
    name = study.study_name
    key = answer_key(study)
    publish(study, recommend_study(study), key)
    commands = {"recommend": ["recommend", "--study-name", name, "--storage", url, "--json"],
                "recommend-fit": ["recommend", "--study-name", name, "--storage", url, "--json", "--priority", "speed"],
                "studies": ["studies", "--storage", url],
                "show": ["show", "--study-name", name, "--storage", url]}
    fitting = ("sklearn", "scipy", "pandas")
    code = "\n".join([
        "import contextlib, io, sys",
        "from autobatch import cli",
        "assert 'torch' not in sys.modules, 'torch imported by autobatch.cli'",
        "out = io.StringIO()",
        "with contextlib.redirect_stdout(out):",
        f"    code = cli.main({commands!r}[sys.argv[1]])",
        "assert code == 0 and out.getvalue().strip(), code",
        "assert 'torch' not in sys.modules, 'torch imported by ' + sys.argv[1]",
        f"fitted = sorted(set({fitting!r}) & set(sys.modules))",
        "assert (sys.argv[1] != 'recommend') or not fitted, 'the stored answer imported ' + str(fitted)",
        "assert (sys.argv[1] != 'recommend-fit') or fitted, 'another question was not fitted'"])
    for command in commands:
        done = subprocess.run([sys.executable, "-c", code, command], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
