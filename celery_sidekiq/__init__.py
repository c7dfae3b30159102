"""Celery, speaking Sidekiq: ``celery_sidekiq.setup(app)`` and the worker parts behind it.

Importing this package registers the broker URL schemes ``sidekiq://`` and ``sidekiqs://``.

::

    from celery import Celery
    import celery_sidekiq

    app = Celery("proj", broker="sidekiq://localhost:6379/0")
    celery_sidekiq.setup(app)

    @app.task(name="Workers::MyWorker")      # runs jobs Ruby pushed with MyWorker.perform_async
    def my_worker(user_id, note): ...
"""

import kombu_sidekiq

from .app import Config, config_of, setup

__all__ = ["Config", "config_of", "setup"]
__version__ = kombu_sidekiq.__version__
