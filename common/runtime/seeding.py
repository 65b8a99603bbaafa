"""Independent, reproducible random streams per purpose.

Two components seeded with the same number must not draw the same numbers (a split and a
partition that both shuffle users with ``default_rng(0)`` would put every held-out user on
client 0). Each purpose gets its own stream: ``default_rng([seed, crc32(purpose)])``.
"""

from __future__ import annotations

import secrets
import zlib

import numpy as np


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """A generator for ``purpose`` (e.g. ``"split"``), independent of other purposes' streams."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def seed_for(seed: int, purpose: str) -> int:
    """A 63-bit integer seed for ``purpose`` (for torch generators and ``random.Random``), from its own stream."""
    return int(rng_for(seed, purpose).integers(0, 2**63 - 1))


def mechanism_seed(purpose: str, reproducible_from: int | None = None) -> int:
    """The seed of one DP mechanism's randomness (its Poisson sampling and its noise): 63 bits.

    Every mechanism (one model's DP-SGD in one round, one statistics release, one baseline
    release …) calls this once with its own ``purpose`` and gets its own seed, so no two
    mechanisms share a stream: the ledger composes them as independent, which they are.

    ``reproducible_from=None`` (the default, and the only choice on a deployed node): fresh OS
    entropy (:func:`secrets.randbits`), which nobody, the server included, can regenerate.
    An integer (``reproducible-noise``, simulation studies only): ``seed_for(seed, purpose)``,
    distinct per purpose, but anyone who knows the seed can regenerate and subtract the noise.
    """
    if reproducible_from is None:
        return secrets.randbits(63)
    return seed_for(reproducible_from, purpose)
