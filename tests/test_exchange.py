"""fedsynth.server.exchange.send_and_receive: push once, pull until every reply is in or the timeout passes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace

import pytest

from fedsynth.server.exchange import send_and_receive


class SlowGrid:
    """Replies to message i arrive at pull number ``arrivals[i]``; records every pull."""

    def __init__(self, arrivals: list[int | None]) -> None:
        self.arrivals = arrivals
        self.pulls: list[set[str]] = []

    def push_messages(self, messages: Iterable[object]) -> list[str]:
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids: Iterable[str]) -> list[SimpleNamespace]:
        wanted = set(ids)
        self.pulls.append(wanted)
        number = len(self.pulls)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"))
            for i, at in enumerate(self.arrivals)
            if at == number and f"m{i}" in wanted
        ]


def test_every_reply_is_collected_and_answered_messages_are_not_asked_for_again() -> None:
    grid = SlowGrid([1, 3, 2])
    replies = send_and_receive(grid, ["a", "b", "c"], timeout=None, poll=0.001)  # type: ignore[arg-type]
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert grid.pulls == [{"m0", "m1", "m2"}, {"m1", "m2"}, {"m1"}]


def test_a_silent_node_costs_the_timeout_and_the_others_replies_are_kept() -> None:
    grid = SlowGrid([1, None])
    started = time.monotonic()
    replies = send_and_receive(grid, ["a", "b"], timeout=0.3, poll=0.05)  # type: ignore[arg-type]
    assert 0.25 <= time.monotonic() - started < 2.0
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]


def test_polls_start_short_and_grow_by_half_up_to_the_poll_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsynth.server.exchange

    slept: list[float] = []
    monkeypatch.setattr(fedsynth.server.exchange.time, "sleep", slept.append)
    send_and_receive(SlowGrid([7]), ["a"], timeout=None, poll=0.05)  # type: ignore[arg-type]
    assert slept == pytest.approx([0.01, 0.015, 0.0225, 0.03375, 0.05, 0.05])  # six waits, then the reply
