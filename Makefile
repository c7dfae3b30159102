# Developer and CI entry points. GNU make; recipes use tabs.
#   make test PYTEST_ARGS="tests/test_support_smoke.py -x"
PY ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=
CHAOS_ARGS ?=
STRESS_RUNS ?= 5
LINT_PATHS ?= kombu_sidekiq celery_sidekiq tests
STAMP := $(VENV)/.installed

.PHONY: deps venv test test-stress lint demo bench fuzz chaos celery-suite clean

deps:
	bash scripts/install-system-deps.sh
	bash scripts/fetch-sidekiq7.sh

venv: $(STAMP)

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

# Re-install whenever pyproject.toml changes (new deps or extras); the stamp records success.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test,fast]'
	touch $@

# pytest must be the last command so its summary is the last line printed.
test: deps venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy -p kombu_sidekiq -p celery_sidekiq

demo: deps venv
	$(VENV)/bin/python examples/demo.py

bench: deps venv
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# The chaos soak (tests/chaos.py): Python and Ruby producers, three workers, the poller and beat
# behind a fault proxy, faults on a seeded random schedule; every job accounted for at the end.
#   make chaos CHAOS_ARGS="--minutes 10 --seed 7"    (tests/test_chaos.py is the CI-sized run)
chaos: deps venv
	$(VENV)/bin/python tests/chaos.py $(CHAOS_ARGS)

# The suite STRESS_RUNS times in a row while every core is kept busy (stress-ng).
test-stress: deps venv
	PYTHON=$(VENV)/bin/python bash scripts/test-stress.sh $(STRESS_RUNS) $(PYTEST_ARGS)

# Coverage-guided fuzzing (atheris, the `fuzz` extra, installed here only) of the readers:
# 1,000,000 inputs in all, crashes saved in fuzz/crashes/. Outside CI's time: `make test`
# never runs it. make fuzz FUZZ_ARGS="--scale 0.01" for a quick look, "--only codec" for one.
fuzz: deps venv
	$(VENV)/bin/python -c 'import atheris' 2>/dev/null || $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[fuzz]'
	$(VENV)/bin/python fuzz/run.py $(FUZZ_ARGS)

# Celery's own integration suite (t/integration of the installed Celery's sdist, from PyPI)
# on sidekiq://, with reruns of flaky tests as Celery's CI has them; about 25 minutes.
#   make celery-suite CELERY_SUITE_ARGS="-x -k chord"   CELERY_SUITE_BROKER=redis: the native run
celery-suite: deps venv
	PYTHON=$(VENV)/bin/python bash scripts/celery-suite.sh $(CELERY_SUITE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis tests/artifacts
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
