"""Send messages to nodes and collect their replies, polling the SuperLink often.

Flower's ``Grid.send_and_receive`` sleeps 3 s between polls for replies on the deployment
(HTTP) grid, so every exchange of a deployed run waited up to 3 s after the last reply
arrived (on average 1.5 s; a secure sum has four exchanges). :func:`send_and_receive` is the
same push-then-pull loop, polling first after 0.01 s and then at intervals growing by half up
to ``poll`` (0.2 s): the short exchanges of secure aggregation (keys, shares, unmask) answer in
tens of milliseconds in a simulation, and a fixed 0.2 s poll added about 0.3 s to each of them
(measured: a secure local round 2.5 s instead of 1.4 s with the fixed poll). A pull is one
small request to the SuperLink, so the cost of polling faster is negligible.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_SECONDS = 0.2
FIRST_POLL_SECONDS = 0.01


def send_and_receive(
    grid: Grid, messages: Iterable[Message], timeout: float | None, poll: float = POLL_SECONDS
) -> list[Message]:
    """Push ``messages``; return the replies that arrive within ``timeout`` seconds (None: wait for all)."""
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    wait = min(FIRST_POLL_SECONDS, poll)
    while pending:
        arrived = list(grid.pull_messages(pending))
        replies += arrived
        pending.difference_update(m.metadata.reply_to_message_id for m in arrived)
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
        wait = min(1.5 * wait, poll)
    return replies
