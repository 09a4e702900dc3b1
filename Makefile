# Two commands on a fresh machine: `make run` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Two stamps: `make run` installs what running needs (requirements.txt), the test, lint
# and bench targets add the dev tools and the Modbus edge program's packages on top.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run test test-fast lint bench bench-quick migrate clean demo

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): requirements.txt requirements-embedded.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-embedded.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-embedded.txt requirements-dev.txt backend/modbus/requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(RUN_STAMP)  ## the service under gunicorn (embedded PostgreSQL unless DATABASE_URL is set)
	$(PY) -m backend serve

demo: $(RUN_STAMP)  ## the service and the demo producer: a live chart at http://127.0.0.1:5000 (docs/dashboard.md)
	$(PY) -m backend.producer.demo $(DEMO_ARGS)

migrate: $(RUN_STAMP)
	$(PY) -m backend migrate

test: $(DEV_STAMP)  ## the whole suite, slow scenarios included
	$(PY) -m ruff check backend tests bench
	$(PY) -m pytest -q

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(DEV_STAMP)
	$(PY) -m ruff check backend tests bench

bench: $(DEV_STAMP)  ## full benchmark run; writes docs/benchmarks.md
	$(PY) -m bench.run

bench-quick: $(DEV_STAMP)  ## seconds-long run proving the benchmark still works
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
