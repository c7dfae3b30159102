"""The order a worker takes its queues in, as sidekiq.rb orders them.

Three orders, the same as Sidekiq's (``Sidekiq::Capsule#queues=``, ``BasicFetch#queues_cmd``):

``strict``    the configured order on every fetch: a job of a later queue is taken only while
              every earlier queue is empty (a backlog starves the later queues, as in Sidekiq).
``weighted``  on every fetch, each queue repeated ``weight`` times, shuffled, duplicates
              dropped: a queue comes first ``weight / total`` of the time.
``random``    the same with every weight 1: every order equally likely.

Sidekiq's notation, ``name`` or ``name,weight`` per queue (``sidekiq -q critical,3 -q
default,2``), reads as Sidekiq 7 reads it: no weight (or 0) everywhere is strict, every weight 1
is random, anything else is weighted, a queue without a weight counting once.

>>> order = QueueOrder.from_sidekiq(["critical,3", "default,2", "low,1"])
>>> order.mode, order.weights
('weighted', (('critical', 3), ('default', 2), ('low', 1)))
>>> QueueOrder.from_sidekiq(["critical", "default"]).ranked(["default", "other", "critical"])
['critical', 'default', 'other']
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

#: The orders, Sidekiq's names for them (Sidekiq 8's ``capsules[...]["mode"]``).
MODES: Final = ("strict", "weighted", "random")


@dataclass(frozen=True)
class QueueOrder:
    """How a worker orders its queues on each fetch.

    ``weights``: the configured queues in their configured order, each with its weight (0 for
    every queue of a strict order). Queues a worker consumes that are not listed come after the
    listed ones (in the order the worker consumes them) and weigh 1.
    """

    mode: str = "strict"
    weights: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"queue order {self.mode!r}: use one of {', '.join(MODES)}")
        seen: set[str] = set()
        for name, weight in self.weights:
            if not isinstance(name, str) or not name or "," in name:
                raise ValueError(f"queue name {name!r}: a name without commas")
            if name in seen:
                raise ValueError(f"queue {name!r} is listed twice: list each queue once")
            seen.add(name)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ValueError(f"queue {name!r}: weight {weight!r} is not a whole number >= 0")
            if self.mode == "strict" and weight:
                raise ValueError(
                    f"queue {name!r} has weight {weight} in a strict order, which has none: "
                    "give no weights, or use the weighted order"
                )
            if self.mode == "random" and weight not in (0, 1):
                raise ValueError(
                    f"queue {name!r} has weight {weight} in a random order, where every queue "
                    "weighs 1: use the weighted order"
                )

    # -- building one ------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        mode: str | None = None,
        weights: Mapping[str, int] | Iterable[Sequence[Any]] | None = None,
    ) -> QueueOrder:
        """From an order's name and ``{queue: weight}`` (or ``[(queue, weight), ...]``).

        No name: weighted if weights are given, else strict. A strict order's weights may be
        ``{queue: 0}``: the list of queues and their rank.
        """
        pairs = _pairs(weights)
        if mode is None:
            mode = "weighted" if any(weight for _, weight in pairs) else "strict"
        if mode not in MODES:
            raise ValueError(f"queue order {mode!r}: use one of {', '.join(MODES)}")
        if mode == "weighted":
            if not pairs:
                raise ValueError("a weighted order needs weights: {queue: weight, ...}")
            for name, weight in pairs:
                if isinstance(weight, int) and not isinstance(weight, bool) and weight < 1:
                    raise ValueError(
                        f"queue {name!r}: weight {weight} in a weighted order; use 1 or more"
                    )
        if mode == "random":
            pairs = tuple((name, 1 if weight == 0 else weight) for name, weight in pairs)
        return cls(mode, pairs)

    @classmethod
    def from_sidekiq(cls, queues: Iterable[str]) -> QueueOrder:
        """From Sidekiq's ``name[,weight]`` notation, one string per queue (``-q`` each)."""
        if isinstance(queues, str):
            raise ValueError(
                f"queues {queues!r}: give a list, one 'name' or 'name,weight' per queue"
            )
        pairs = []
        for text in queues:
            if not isinstance(text, str):
                raise ValueError(f"queue {text!r}: write 'name' or 'name,weight'")
            name, _, weight = text.strip().partition(",")
            name, weight = name.strip(), weight.strip()
            if not name or "," in weight:
                raise ValueError(f"queue {text!r}: write 'name' or 'name,weight'")
            if weight and not weight.isdigit():
                raise ValueError(
                    f"queue {text!r}: the weight must be a whole number >= 0, as in 'low,1'"
                )
            pairs.append((name, int(weight or 0)))
        if not pairs:
            raise ValueError("no queues given: list at least one, as in ['default']")
        weights = [weight for _, weight in pairs]
        if not any(weights):
            mode = "strict"
        elif all(weight == 1 for weight in weights):
            mode = "random"
        else:
            mode = "weighted"
        if mode == "weighted":  # a queue without a weight counts once, as in Sidekiq
            pairs = [(name, max(weight, 1)) for name, weight in pairs]
        return cls(mode, tuple(pairs))

    # -- using one ---------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The configured queues, in their configured order."""
        return [name for name, _ in self.weights]

    def weight(self, queue: str) -> int:
        """How many times ``queue`` goes into a weighted draw (unlisted queues: 1)."""
        return max(dict(self.weights).get(queue, 1), 1)

    def ranked(self, queues: Iterable[str]) -> list[str]:
        """``queues`` in the configured order, the unlisted ones after, as given."""
        rank = {name: i for i, name in enumerate(self.names)}
        given = list(dict.fromkeys(queues))
        return sorted(given, key=lambda q: (rank.get(q, len(rank)), given.index(q)))

    def fetch_order(self, queues: Sequence[str], rng: random.Random) -> list[str]:
        """The order of one fetch over ``queues`` (as :meth:`ranked` gives them)."""
        if self.mode == "strict" or len(queues) < 2:
            return list(queues)
        if self.mode == "random":
            shuffled = list(queues)
            rng.shuffle(shuffled)
            return shuffled
        draw = [queue for queue in queues for _ in range(self.weight(queue))]
        rng.shuffle(draw)
        return list(dict.fromkeys(draw))

    def reported(self, queues: Iterable[str]) -> dict[str, int]:
        """``{queue: weight}`` as Sidekiq reports it in a process's ``info``: 0 for every queue
        of a strict order (the Web UI then shows the bare names), the weights otherwise."""
        ranked = self.ranked(queues)
        if self.mode == "strict":
            return dict.fromkeys(ranked, 0)
        return {queue: self.weight(queue) for queue in ranked}

    def transport_options(self) -> dict[str, Any]:
        """The kombu transport options that carry this order to a channel."""
        return {"queue_order": self.mode, "queue_weights": [list(pair) for pair in self.weights]}


def _pairs(weights: Mapping[str, int] | Iterable[Sequence[Any]] | None) -> tuple[Any, ...]:
    if weights is None:
        return ()
    if isinstance(weights, str):
        raise ValueError(f"queue weights {weights!r}: give {{queue: weight, ...}}")
    items: Iterable[Any] = weights.items() if isinstance(weights, Mapping) else weights
    pairs = []
    for item in items:
        try:
            name, weight = item
        except (TypeError, ValueError):
            raise ValueError(f"queue weights: {item!r} is not a (queue, weight) pair") from None
        pairs.append((name, weight))
    return tuple(pairs)
