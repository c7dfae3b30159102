"""Test infrastructure: real redis-server, celery worker and sidekiq.rb processes.

Import convention: ``tests/`` is not a package. ``tests/conftest.py`` puts ``tests/`` at the
front of ``sys.path``, so test modules import helpers as ``from support.waiting import
wait_for`` (this works with plain ``pytest`` from the repo root, whatever the import mode).
Because ``tests/`` has no ``__init__.py``, test module basenames must be unique.

Modules:
  redis_server  RedisServer (own redis-server on a free port), free_port()
  waiting       wait_for(predicate, timeout=..., interval=..., message=...)
  worker        CeleryWorker (real ``celery worker`` subprocess)
  ruby          ruby_available(), ruby_eval(), ruby_push(), SidekiqProcess (real sidekiq.rb)
  env           in_ci(), missing_or_fail() (skip locally, fail in CI)
  procs         REPO_ROOT/TESTS_DIR, log tail and process-group kill helpers

Fixtures (tests/conftest.py): redis_server (session), redis, redis_url, broker_url,
redis_server_factory, celery_worker, require_ruby, sidekiq_process. A failing test's report
gets the log tail of every celery/sidekiq process it started.
"""
