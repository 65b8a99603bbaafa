"""Independent, reproducible random streams per purpose.

Two components seeded with the same number must not draw the same numbers (a split and a
partition that both shuffle users with ``default_rng(0)`` would put every held-out user on
client 0). Each purpose gets its own stream: ``default_rng([seed, crc32(purpose)])``.
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    """A generator for ``purpose`` (e.g. ``"split"``), independent of other purposes' streams."""
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])


def seed_for(seed: int, purpose: str) -> int:
    """A 63-bit integer seed for ``purpose`` (for torch generators and ``random.Random``), from its own stream."""
    return int(rng_for(seed, purpose).integers(0, 2**63 - 1))
