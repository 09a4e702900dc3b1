# Two commands on a fresh machine: `make run` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-fast lint bench bench-quick migrate clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)  ## the service under gunicorn (embedded PostgreSQL unless DATABASE_URL is set)
	$(PY) -m backend serve

migrate: $(STAMP)
	$(PY) -m backend migrate

test: $(STAMP)  ## the whole suite, slow scenarios included
	$(PY) -m ruff check backend tests bench
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check backend tests bench

bench: $(STAMP)  ## full benchmark run; writes docs/benchmarks.md
	$(PY) -m bench.run

bench-quick: $(STAMP)  ## seconds-long run proving the benchmark still works
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
