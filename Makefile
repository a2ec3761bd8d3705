# The two commands a newcomer needs:  make demo  and  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
BUDGET ?= 5m

.PHONY: setup demo test bench bench-quick clean

$(BIN)/autobatch: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/autobatch

demo: setup  ## tune resnet18 on the bundled digits, embedded SQLite storage
	$(BIN)/autobatch tune --model resnet18 --dataset digits --budget $(BUDGET)

test: setup  ## the whole test suite (PostgreSQL tests included); -rs lists why any test was skipped
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

bench-quick: setup  ## BENCHMARKS.md, quick mode (minutes)
	$(BIN)/python scripts/benchmark.py --quick

bench: setup  ## BENCHMARKS.md, full mode
	$(BIN)/python scripts/benchmark.py

clean:
	rm -rf $(VENV) autobatch-studies reports .pytest_cache
