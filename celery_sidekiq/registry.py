"""Which Celery task runs which Sidekiq class, and how a task's jobs are written.

A task's name is its Sidekiq class (``@app.task(name="Workers::MyWorker")``), or a task declares
``sidekiq_class="Workers::MyWorker"`` and keeps a Pythonic name. Sidekiq's job options go in
``sidekiq_options``, as Ruby's ``sidekiq_options`` does::

    @app.task(name="reports.build", sidekiq_class="PaymentReportWorker",
              sidekiq_options={"retry": 5, "backtrace": True, "tags": ["billing"]})
    def build_report(account_id): ...
"""

from __future__ import annotations

from typing import Any, Final

from celery import Celery

from kombu_sidekiq.codec import JobOptions

from .activejob import register_wrapper_tasks

#: The Sidekiq job options a task may set in ``sidekiq_options``; each becomes a job key.
TASK_OPTIONS: Final = frozenset(
    {"retry", "retry_queue", "backtrace", "tags", "dead", "retry_for", "unique_for", "unique_until"}
)

#: Sidekiq options a task may also set as plain task options (``@app.task(unique_for=60)``).
PLAIN_TASK_OPTIONS: Final = ("unique_for", "unique_until")


#: What ``setup(failures=...)`` accepts; see :mod:`celery_sidekiq.retry`.
FAILURE_MODES: Final = ("auto", "celery", "sidekiq")


class CeleryRegistry:
    """The :class:`kombu_sidekiq.codec.Registry` of one Celery app.

    ``failures`` is ``setup(failures=...)``: with ``"sidekiq"`` every job is written to fail
    Sidekiq's way; otherwise a task that asks for no Sidekiq retries gets a job that fails
    Celery's way (``JobOptions.celery_failures``).
    """

    def __init__(self, app: Celery, failures: str = "auto") -> None:
        self.app = app
        self.failures = failures
        self._classes: dict[str, str] = {}
        self._seen = -1
        register_wrapper_tasks(app)  # the tasks of ActiveJob jobs that cannot be unwrapped

    def __json__(self) -> str:
        # It rides in broker_transport_options, which `celery inspect stats` sends as JSON.
        return f"CeleryRegistry({self.app.main!r})"

    def task_for(self, klass: str) -> str:
        """The task that runs ``klass``: one declaring it as ``sidekiq_class``, else its name."""
        tasks = self.app.tasks
        if len(tasks) != self._seen:  # tasks may be registered at any time; rebuild then
            self._classes = {
                cls: name
                for name, task in tasks.items()
                if (cls := getattr(task, "sidekiq_class", None))
            }
            self._seen = len(tasks)
        return self._classes.get(klass, klass)

    def job_options(self, task_name: str) -> JobOptions:
        task = self.app.tasks.get(task_name)
        if task is None:
            return JobOptions(klass=task_name, local=False)
        options = sidekiq_options(task)
        celery_way = "retry" not in options and self.failures != "sidekiq"
        return JobOptions(
            klass=getattr(task, "sidekiq_class", None) or task_name,
            retry=options.pop("retry", True),
            local=True,
            extra=options,
            celery_failures=celery_way,
            ignore_result=bool(getattr(task, "ignore_result", False)),
        )


def sidekiq_options(task: Any) -> dict[str, Any]:
    """A task's Sidekiq options, checked; a wrong one fails with what to change."""
    options = dict(getattr(task, "sidekiq_options", None) or {})
    unknown = set(options) - TASK_OPTIONS
    if unknown:
        raise ValueError(
            f"task {task.name!r}: unknown sidekiq_options {sorted(unknown)}; "
            f"known: {sorted(TASK_OPTIONS)}"
        )
    for name in PLAIN_TASK_OPTIONS:  # also plain task options: @app.task(unique_for=3600)
        if getattr(task, name, None) is not None:
            options.setdefault(name, getattr(task, name))
    if getattr(task, "sidekiq_retry", None) is not None:  # @app.task(sidekiq_retry=5)
        options.setdefault("retry", task.sidekiq_retry)
    retry = options.get("retry", True)
    if isinstance(retry, bool) or (isinstance(retry, int) and retry >= 0):
        return options
    raise ValueError(
        f"task {task.name!r}: sidekiq_options retry must be true, false or a count >= 0, "
        f"not {retry!r}"
    )


def asks_for_sidekiq_retries(task: Any) -> bool:
    """Whether a task asks for Sidekiq's retries (``sidekiq_options={"retry": ...}`` or
    ``sidekiq_retry=...``): its jobs then fail Sidekiq's way whoever wrote them."""
    try:
        return "retry" in sidekiq_options(task)
    except ValueError:  # refused where its jobs are written; here, it asked for retries
        return True
