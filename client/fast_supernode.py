"""``flower-supernode`` with its idle polls shortened from 3 s and 0.5 s to 0.2 s (what ``fedsynth-node`` starts).

Its object pulls from the SuperLink retry quickly too (:mod:`fedsynth.common.runtime.object_pulls`).

    python -m fedsynth.client.fast_supernode <flower-supernode arguments>

Flower 1.42's SuperNode main loop (``flwr.supernode.start_client_internal``) pulls one message
from the SuperLink, waits for the ClientApp's reply polling every 0.5 s, pushes it, and when a
pull finds nothing sleeps 3 s before the next. In a deployed run the next round's message thus
waits 0–3 s (1.5 s on average) at every node, plus 0–0.5 s for each reply: measured as part of
the ~5.7 s between a node's reply and its next task (``python -m fedsynth.simulations.bench.deployment``,
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

from fedsynth.common.runtime.object_pulls import shorten_object_pull_backoff

IDLE_POLL_SECONDS = 0.2


class ShortSleeps:
    """The ``time`` module, except that ``sleep`` sleeps at most :data:`IDLE_POLL_SECONDS`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, IDLE_POLL_SECONDS))


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
