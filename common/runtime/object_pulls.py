"""Flower's object pulls retried after 0.05 s instead of 1 s, 2 s, 4 s … (a deployment's message transfers).

In Flower 1.42 a message's content travels as objects (its records and array chunks, ~5 MB each)
pulled one by one after the message itself. A receiver can ask before the sender has pushed them
all: the ClientApp starts while its SuperNode is still pulling the message from the SuperLink, and
the ServerApp sees a reply as soon as a node has pushed the message header, before its 5 MB of
Mult-VAE + GAN weights. An object not there yet is retried after ``PULL_INITIAL_BACKOFF`` (1 s),
doubling to ``PULL_BACKOFF_CAP`` (10 s), so every late object costs up to a second or more of idle
waiting. :func:`shorten_object_pull_backoff` sets the keyword defaults of Flower's two pull
functions to :data:`OBJECT_PULL_BACKOFF` (0.05 s doubling to 1 s, with enough tries that the
longest wait for one object stays above an hour, as Flower's own limit does). The cost is a few
more small requests while a transfer is under way. ``tests/test_warm_node.py`` checks the
defaults exist under these names, so a Flower upgrade that renames them fails a test.

Called in each process that pulls: the SuperNode (:mod:`fedsynth.client.fast_supernode`), every ClientApp
``fedsynth-node`` forks (:mod:`fedsynth.client.warm_node`) and the ServerApp (:mod:`fedsynth.server.app`).
"""

from __future__ import annotations

OBJECT_PULL_BACKOFF = {"initial_backoff": 0.05, "backoff_cap": 1.0, "max_tries_per_object": 5_000}


def shorten_object_pull_backoff() -> None:
    """Flower's object pulls in this process retry after :data:`OBJECT_PULL_BACKOFF` (process-wide)."""
    from flwr.supercore.inflatable import inflatable_utils

    for function in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        assert function.__kwdefaults__ is not None
        function.__kwdefaults__.update(OBJECT_PULL_BACKOFF)
