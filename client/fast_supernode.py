"""``flower-supernode`` with its idle polls shortened from 3 s and 0.5 s to 0.2 s (what ``fedsynth-node`` starts).

Also :func:`shorten_object_pull_backoff`, which ``fedsynth-node`` applies in every ClientApp it forks.

    python -m client.fast_supernode <flower-supernode arguments>

Flower 1.42's SuperNode main loop (``flwr.supernode.start_client_internal``) pulls one message
from the SuperLink, waits for the ClientApp's reply polling every 0.5 s, pushes it, and when a
pull finds nothing sleeps 3 s before the next. In a deployed run the next round's message thus
waits 0–3 s (1.5 s on average) at every node, plus 0–0.5 s for each reply: measured as part of
the ~5.7 s between a node's reply and its next task (``python -m simulations.bench.deployment``,
docs/scale.md). The sleeps are hard-coded, so this entry point replaces the ``time`` that module
sees by one whose ``sleep`` sleeps at most :data:`IDLE_POLL_SECONDS`, then runs Flower's own
``flower_supernode()``; nothing else changes (every other call goes to the real ``time``). The
cost is one small authenticated pull request per node every 0.2 s while idle.
``tests/test_warm_node.py`` checks that Flower's loop still sleeps where this expects, so an
upgrade that moves the sleeps fails a test instead of silently polling slowly again.
"""

from __future__ import annotations

import sys
import time
from typing import Any

IDLE_POLL_SECONDS = 0.2
# A ClientApp can start while its SuperNode is still pulling the message from the SuperLink; an
# object not there yet is retried after 1 s, 2 s, … (Flower's PULL_INITIAL_BACKOFF, cap 10 s).
# Here: 0.05 s, doubling to at most 1 s, with tries enough that the longest wait for an object
# stays above an hour. Measured: this did NOT remove the 2–3 s between a ClientApp's connection
# and its FAB installation on loopback (docs/scale.md), so that gap has another cause.
OBJECT_PULL_BACKOFF = {"initial_backoff": 0.05, "backoff_cap": 1.0, "max_tries_per_object": 5_000}


class ShortSleeps:
    """The ``time`` module, except that ``sleep`` sleeps at most :data:`IDLE_POLL_SECONDS`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, IDLE_POLL_SECONDS))


def shorten_object_pull_backoff() -> None:
    """Flower's object pulls (the ClientApp's pull of its message) retry after :data:`OBJECT_PULL_BACKOFF`."""
    from flwr.supercore.inflatable import inflatable_utils

    for function in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        assert function.__kwdefaults__ is not None
        function.__kwdefaults__.update(OBJECT_PULL_BACKOFF)


def main() -> None:
    """Flower's ``flower-supernode`` with the short polls (arguments as ``flower-supernode``'s)."""
    from flwr.supernode import start_client_internal
    from flwr.supernode.cli import flower_supernode

    start_client_internal.time = ShortSleeps()  # type: ignore[assignment]
    shorten_object_pull_backoff()
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
