# Two commands on a fresh machine:  `make demo` (set up + train on two-moons), `make test`.
PY      := .venv/bin/python
SHARED  := ../shared/data

.PHONY: setup demo test test-slow lint data bench clean

.venv/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: .venv/.installed

# Make ./data a complete data root from the shared offline copies, where they exist (5 s, idempotent).
data:
	@if [ -d $(SHARED) ]; then $(PY) $(SHARED)/prepare.py data; else echo "no $(SHARED): using ZOO_DATA or ./data as it is"; fi

demo: setup
	$(PY) train.py fit --data moons --model mlp --model.hidden [10,10]

test: setup data lint
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check .

test-slow: setup data
	$(PY) -m pytest -q -m slow

bench: setup data
	$(PY) bench/run.py --threads 1

clean:
	rm -rf checkpoints/*/ .pytest_cache
