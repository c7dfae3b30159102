"""Sidekiq's wire format for kombu: the job model, the codec, and the ``sidekiq://`` transport.

Importing this package registers the broker URL schemes ``sidekiq://``, ``sidekiqs://`` (TLS)
and ``sidekiq-sentinel://`` (Redis Sentinel) with kombu. It never imports Celery.

>>> import kombu_sidekiq
>>> from kombu import Connection
>>> Connection("sidekiq://localhost:6379/0").transport_cls
'sidekiq'
"""

from kombu.transport import TRANSPORT_ALIASES

from .client import Client
from .codec import ClassRegistry, CodecError, JobOptions, Registry
from .job import InvalidJob, Job, build, new_jid
from .keys import Keys

__all__ = [
    "ClassRegistry",
    "Client",
    "CodecError",
    "InvalidJob",
    "Job",
    "JobOptions",
    "Keys",
    "Registry",
    "build",
    "new_jid",
]

__version__ = "0.1.0"

TRANSPORT_ALIASES.setdefault("sidekiq", "kombu_sidekiq.transport:Transport")
TRANSPORT_ALIASES.setdefault("sidekiqs", "kombu_sidekiq.transport:TLSTransport")
TRANSPORT_ALIASES.setdefault("sidekiq-sentinel", "kombu_sidekiq.transport:SentinelTransport")
