"""Redis key names, with the optional namespace prefix.

Sidekiq's keys are fixed names; a namespace (redis-namespace's and rusty-sidekiq's ``ns:`` style)
prefixes every key but never a value: queue names in ``queues``, identities in ``processes`` and
job JSON stay bare.

>>> Keys().queue("default")
'queue:default'
>>> Keys("yolo_app").unique("default", "HelloWorker", "ab12")
'yolo_app:sidekiq:unique:default:HelloWorker:ab12'
"""

from __future__ import annotations

from dataclasses import dataclass

#: The prefix of a queue list; what follows it is the queue name.
QUEUE_PREFIX = "queue:"


@dataclass(frozen=True)
class Keys:
    """Every key name the bridge uses, for one namespace (``""`` for none)."""

    namespace: str = ""

    def key(self, name: str) -> str:
        """``name`` under the namespace."""
        return f"{self.namespace}:{name}" if self.namespace else name

    def strip(self, key: str) -> str:
        """The bare name of a namespaced key (as BRPOP replies give them back)."""
        prefix = f"{self.namespace}:" if self.namespace else ""
        return key[len(prefix) :] if prefix and key.startswith(prefix) else key

    def queue(self, name: str) -> str:
        """The LIST of a Sidekiq queue: producers LPUSH, consumers BRPOP, requeues RPUSH."""
        return self.key(QUEUE_PREFIX + name)

    def queue_name(self, key: str) -> str | None:
        """The queue name of a queue list key, or None for any other key."""
        bare = self.strip(key)
        return bare[len(QUEUE_PREFIX) :] if bare.startswith(QUEUE_PREFIX) else None

    @property
    def queues(self) -> str:
        """SET of queue names; the Web UI knows only the queues listed here."""
        return self.key("queues")

    @property
    def schedule(self) -> str:
        """ZSET of jobs to enqueue later; score = float epoch seconds when due."""
        return self.key("schedule")

    @property
    def retry(self) -> str:
        """ZSET of failed jobs waiting for their next try; score = when."""
        return self.key("retry")

    @property
    def dead(self) -> str:
        """ZSET of jobs that ran out of retries or could not be read; score = when they died."""
        return self.key("dead")

    @property
    def processes(self) -> str:
        """SET of live process identities (each has a HASH of its own, TTL 60 s)."""
        return self.key("processes")

    @property
    def periodic(self) -> str:
        """rusty-sidekiq's ZSET of periodic jobs; score = the next fire time."""
        return self.key("periodic")

    def unique(self, queue: str, klass: str, digest: str) -> str:
        """rusty-sidekiq's unique lock for (queue, class, args digest)."""
        return self.key(f"sidekiq:unique:{queue}:{klass}:{digest}")

    def kombu(self, name: str) -> str:
        """A key of kombu's own machinery (bindings, unacked, non-task queues)."""
        return self.key(name)
