"""OpenMP's idle spin, shortened in every process fedsynth starts, so DP-SGD's noise threads get the cores.

torch's CPU build runs its matrix products on GNU OpenMP (libgomp) threads. After each parallel
region those threads busy-wait for the next one, by default for ``GOMP_SPINCOUNT`` = 300,000
iterations (milliseconds here). DP-SGD draws its Gaussian noise right after the backward pass in
its own threads (:mod:`fedsynth.common.privacy.dpsgd.noise`), and the spinning OpenMP workers hold the very
cores those threads need. Measured on 2 cores (``python -m fedsynth.simulations.bench.dp_speed``, Mult-VAE
600-200 on 943 × 1,682): drawing 2.4 M normals on 2 threads takes 4.9 ms alone and 11 ms right
after a matrix product; a DP epoch took 0.32 s with the default and 0.27 s with 10,000.

libgomp reads the variable once, when it loads, so it must be in the environment of the process
before torch is imported: :func:`with_short_openmp_spin` is applied to the environment of the
processes ``fedsynth run``/``train``/``deploy local`` start (Flower's SuperLink, simulation and
app processes inherit it) and ``fedsynth-node`` sets it for itself before it imports torch. A
value the user set (``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``) is kept.
"""

from __future__ import annotations

from collections.abc import Mapping

SPIN_VARIABLE = "GOMP_SPINCOUNT"
SHORT_SPIN = "10000"


def with_short_openmp_spin(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus ``GOMP_SPINCOUNT=10000``, unless it already says how OpenMP threads wait."""
    out = dict(env)
    if SPIN_VARIABLE not in out and "OMP_WAIT_POLICY" not in out:
        out[SPIN_VARIABLE] = SHORT_SPIN
    return out
