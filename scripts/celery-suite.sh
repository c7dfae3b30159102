#!/usr/bin/env bash
# Celery's own integration suite on sidekiq://: `make celery-suite`.
#
#   scripts/celery-suite.sh [PYTEST ARGS ...] [t/integration/TEST ...]   # default: FILES below
#
# The suite is t/integration of the sdist of the installed Celery, which pip downloads at that
# exact version into .cache/celery-suite (once); no test code of Celery's is kept in this repo.
# It runs from the unpacked sdist with its own conftest, against a private redis-server, with
# tests/celery_suite/celery_sidekiq_suite.py loaded as a plugin: that plugin makes every app the
# suite builds call celery_sidekiq.setup(app, default_queue="celery"), the two lines a user adds.
#
# Environment:
#   CELERY_SUITE_BROKER=sidekiq (default) | redis   redis: the same run on Celery's native
#                                                   transport, to know what passes there
#   CELERY_SUITE_TIMEOUT=N    cap each test at N seconds (the suite waits up to 120 s per get)
#   CELERY_SUITE_RERUNS=0     turn off the suite's own reruns of flaky tests (5 per test)
#   PYTHON                    the interpreter (default .venv/bin/python)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
# Absolute: the suite runs from inside the unpacked sdist (make passes .venv/bin/python).
case $python in
    */*) python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python") ;;
    *) python=$(command -v "$python") ;;
esac
broker=${CELERY_SUITE_BROKER:-sidekiq}
version=$("$python" -c 'import celery; print(celery.__version__)')
cache=$root/.cache/celery-suite
sdist=$cache/celery-$version

# What the suite needs beyond pytest: pydantic (its tasks module imports it; in the test extra
# too) and, unless reruns are off, pytest-rerunfailures (its @flaky marks): the celery-suite extra.
needs=pydantic
if [ "${CELERY_SUITE_RERUNS:-}" != 0 ]; then needs="$needs, pytest_rerunfailures"; fi
if ! "$python" -c "import $needs" 2>/dev/null; then
    "$python" -m pip install --quiet --disable-pip-version-check -e "$root[celery-suite]"
fi
if [ ! -f "$sdist/t/integration/conftest.py" ]; then
    mkdir -p "$cache"
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary :all: "celery==$version" -d "$cache"
    tar -xzf "$cache/celery-$version.tar.gz" -C "$cache"
fi

# A private redis-server: free port, temp dir, no persistence.
workdir=$(mktemp -d)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --dir "$workdir" --save '' --appendonly no \
    --daemonize yes --pidfile "$workdir/redis.pid" --logfile "$workdir/redis.log"
cleanup() {
    if [ -f "$workdir/redis.pid" ]; then kill "$(cat "$workdir/redis.pid")" 2>/dev/null || true; fi
    rm -rf "$workdir"
}
trap cleanup EXIT
for _ in $(seq 50); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done

case $broker in
    sidekiq) export TEST_BROKER="sidekiq://127.0.0.1:$port/0" ;;
    redis) export TEST_BROKER="redis://127.0.0.1:$port/0" ;;
    *) echo "CELERY_SUITE_BROKER=$broker: use sidekiq or redis" >&2; exit 2 ;;
esac
export TEST_BACKEND="redis://127.0.0.1:$port/0"
export REDIS_HOST=127.0.0.1 REDIS_PORT=$port
export PYTHONPATH="$root/tests/celery_suite:$root${PYTHONPATH:+:$PYTHONPATH}"

# The parts of the suite that test a broker with a redis result backend (the others test
# other result backends: cache, database, ...).
FILES=(
    t/integration/test_tasks.py t/integration/test_canvas.py t/integration/test_inspect.py
    t/integration/test_worker.py t/integration/test_serialization.py
    t/integration/test_redis_backend.py t/integration/test_group_chains.py
    t/integration/test_connection_recovery.py t/integration/test_beat.py
)
# Options alone (-x, -k ...) run the default files; naming a test or a file runs that instead.
args=("$@")
named=0
for arg in "$@"; do
    case $arg in t/*) named=1 ;; esac
done
if [ $named = 0 ]; then args+=("${FILES[@]}"); fi
plugins=(-p celery_sidekiq_suite)
if [ "${CELERY_SUITE_RERUNS:-}" = 0 ]; then plugins+=(-p no:rerunfailures); fi

echo "celery-suite: Celery $version's t/integration, broker $TEST_BROKER, backend $TEST_BACKEND"
cd "$sdist"
"$python" -m pytest "${plugins[@]}" -p no:cacheprovider -o addopts=--strict-markers -ra "${args[@]}"
