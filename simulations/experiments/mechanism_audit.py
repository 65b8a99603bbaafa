"""White-box one-run audit of the DP releases a silo makes (Steinke, Nasr, Jagielski 2023).

For one release and one target ε: a silo of real users (the built-in generated data) gets m canary
users, each included independently with probability ½ (:func:`inclusion`); the silo calibrates its
privacy plan exactly as a client does (:func:`~fedsynth.common.privacy.plan.plan_privacy` on its own user count,
the run config's defaults otherwise); the release is made once with the project's own function; each
canary is scored from what the server receives; :func:`~fedsynth.common.privacy.one_run_audit.audit_scores`
turns the scores into ε̂, the empirical lower bound at confidence 1 − β, compared with the ε the
accountant charges for that release alone (:func:`~fedsynth.common.privacy.accounting.epsilon` of the plan's
events for it, at the silo's δ).

Canaries and scores (white-box: the auditor knows the canaries and reads the release directly):

* ``statistics`` (:func:`~fedsynth.common.privacy.releases.statistics.noisy_statistics`): canary i
  holds ⌈C²⌉ items of its own (C = ``statistics-clip``), so its clipped vector has norm C, all of the
  item-count part of the sensitivity √(C² + 1); score = the sum of the released counts of its items.
* ``cooccurrence`` (:func:`~fedsynth.common.privacy.releases.cooccurrence.noisy_cooccurrence`): canary i
  holds one item of its own, which the server puts in the released item set (with the most popular real items); it adds
  x xᵀ/ℓ = 1 to its diagonal entry, the whole sensitivity; score = that released entry.
* ``vae-round`` (:func:`fedsynth.client.training.train_vae_round`, one round of DP-SGD on the Mult-VAE from a
  fresh model): canary i holds one item of its own; score = how much the returned model lowered the
  canary's own multinomial loss (z = μ, no dropout) against the start model. Poisson sampling, clipping
  of a whole model's gradient and Adam leave little of one user in one round: this audit is loose.

Deliberately broken variants (``broken``), each charged what the broken code would charge:

* ``shared-noise``: two releases of different functions of the data from the same noise seed, both
  charged as independent releases. Statistics: the counts at clipping bounds C and C/2; the auditor scores
  the difference of the two releases, each divided by its public noise std, in which the noise cancels.
  Co-occurrence: the release over the items, and one over the same positions with each canary item
  swapped for a decoy item nobody holds; the difference of the two diagonal entries is the canary's exact
  contribution. (Not defined for ``vae-round``: Adam's per-coordinate scaling keeps two runs' noise from
  cancelling.)
* ``half-noise``: the release made at σ/2 while the accountant charges σ.
* ``uncharged``: two independent releases while the accountant counts one. Statistics: the release and
  its re-release through the co-occurrence's budget (the first-order fallback of ``handle_cooccurrence``,
  at the co-occurrence's σ) combined by :meth:`~fedsynth.common.privacy.releases.statistics.NoisyStatistics.combined`;
  co-occurrence: two releases, scores summed; ``vae-round``: two rounds from the same start, scores summed.

Everything is deterministic from ``seed`` (the noise too: this is a simulation, not a deployment).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import GeneratedDataConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.accounting import DPEvent, epsilon
from fedsynth.common.privacy.one_run_audit import DEFAULT_BETA, OneRunAudit, audit_scores, fixed_guesses
from fedsynth.common.privacy.plan import PrivacyPlan, plan_privacy
from fedsynth.common.privacy.releases.cooccurrence import MAX_MARGINAL_ITEMS, cooccurrence_event, noisy_cooccurrence
from fedsynth.common.privacy.releases.statistics import noisy_statistics, statistics_event
from fedsynth.common.runtime.seeding import rng_for, seed_for

RELEASES = ("statistics", "cooccurrence", "vae-round")
AUDITED_ROUNDS = 3  # vae-round under a config without rounds: the plan of a run with this many
BROKEN = ("none", "shared-noise", "half-noise", "uncharged")
REAL_USERS, REAL_ITEMS = 200, 400  # the silo's real users (generated data) and their catalogue
COOCCURRENCE_REAL_ITEMS = 100  # real items released with the canary items in the co-occurrence
MAX_CANARY_ITEMS = 256  # items per statistics canary at most (⌈C²⌉ for C ≤ 16)


@dataclass(frozen=True)
class ReleaseAudit:
    """One release audited at one target ε: what the accountant charges and what one run proved."""

    release: str
    broken: str
    target_epsilon: float  # the run's ε (the plan's target over every release and round)
    accounted: float  # ε the accountant charges for this release alone, at the silo's δ
    audit: OneRunAudit  # ε̂ and the guesses behind it
    noise_multiplier: float  # σ of this release in the plan (before any broken change)
    users: int  # the silo's users (real + included canaries)
    seconds: float

    @property
    def empirical(self) -> float:
        return self.audit.epsilon

    @property
    def tightness(self) -> float:
        """ε̂ / accounted ε (above 1: the accounting or the code is wrong)."""
        return self.empirical / self.accounted if self.accounted > 0 else math.inf

    @property
    def violation(self) -> bool:
        return self.empirical > self.accounted

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "broken": self.broken,
            "target_epsilon": self.target_epsilon,
            "accounted_epsilon": self.accounted,
            "empirical_epsilon": self.empirical,
            "tightness": self.tightness,
            "above_accounted": self.violation,
            "noise_multiplier": self.noise_multiplier,
            "users": self.users,
            "seconds": self.seconds,
            **{f"audit_{key}": value for key, value in self.audit.to_dict().items()},
        }


def real_users(seed: int, users: int = REAL_USERS, items: int = REAL_ITEMS) -> sp.csr_matrix:
    """The silo's real users: the built-in generated data's positives (rating ≥ 4), users with none dropped."""
    from fedsynth.common.data.generated import generate_table

    frame = generate_table(GeneratedDataConfig(num_users=users, num_items=items, seed=seed)).frame
    frame = frame[frame["value"] >= 4.0]
    rows = frame["user"].astype("category").cat.codes.to_numpy()
    matrix = sp.csr_matrix((np.ones(len(frame)), (rows, frame["item"].to_numpy() - 1)), shape=(rows.max() + 1, items))
    matrix.data[:] = 1.0
    return matrix


def inclusion(seed: int, canaries: int) -> np.ndarray:
    """Which canaries are in the silo: bool (m,), each independently with probability ½."""
    return rng_for(seed, "one-run-audit/inclusion").random(canaries) < 0.5


def silo(real: sp.csr_matrix, canaries: sp.csr_matrix, included: np.ndarray) -> sp.csr_matrix:
    """Real users (widened to the canaries' catalogue) followed by the included canaries' rows."""
    wide = sp.hstack([real, sp.csr_matrix((real.shape[0], canaries.shape[1] - real.shape[1]))])
    return sp.vstack([wide, canaries[np.flatnonzero(included)]]).tocsr()


def canary_rows(count: int, items_each: int, first_item: int, num_items: int) -> sp.csr_matrix:
    """``count`` canary users, canary i holding its own ``items_each`` items from first_item + i·items_each on."""
    columns = first_item + np.arange(count * items_each)
    return sp.csr_matrix(
        (np.ones(len(columns)), (np.repeat(np.arange(count), items_each), columns)), shape=(count, num_items)
    )


@lru_cache(maxsize=64)
def silo_plan(config: RunConfig, num_users: int) -> PrivacyPlan:
    """The plan a client of ``num_users`` users calibrates for ``config`` (cached: calibration takes seconds)."""
    return plan_privacy(config.privacy(), num_users, config.local(), config.num_server_rounds)


def _statistics(
    real: sp.csr_matrix, included: np.ndarray, config: RunConfig, broken: str, seed: int
) -> tuple[np.ndarray, list[DPEvent], PrivacyPlan, int, float]:
    clip = config.statistics_clip
    each = min(MAX_CANARY_ITEMS, math.ceil(clip**2))
    m, first = len(included), real.shape[1]
    rows = silo(real, canary_rows(m, each, first, first + m * each), included)
    plan = silo_plan(config, rows.shape[0])
    sigma = plan.statistics_noise
    noise = rng_for(seed, "one-run-audit/statistics-noise")
    if broken == "shared-noise":
        same = seed_for(seed, "one-run-audit/statistics-shared")
        one = noisy_statistics(rows, clip, sigma, np.random.default_rng(same))
        two = noisy_statistics(rows, clip / 2, sigma, np.random.default_rng(same))
        counts = one.item_counts / one.noise_std - two.item_counts / two.noise_std
    elif broken == "uncharged":  # the fallback re-release at the co-occurrence's σ, never charged
        again = plan.cooccurrence_noise if plan.cooccurrence else sigma
        second = noisy_statistics(rows, clip, again, rng_for(seed, "one-run-audit/statistics-again"))
        counts = noisy_statistics(rows, clip, sigma, noise).combined(second).item_counts
    else:
        counts = noisy_statistics(rows, clip, sigma / (2.0 if broken == "half-noise" else 1.0), noise).item_counts
    scores = counts[first:].reshape(m, each).sum(axis=1)
    charged = [statistics_event(sigma)] * (2 if broken == "shared-noise" else 1)
    return scores, charged, plan, rows.shape[0], sigma


def _cooccurrence(
    real: sp.csr_matrix, included: np.ndarray, config: RunConfig, broken: str, seed: int
) -> tuple[np.ndarray, list[DPEvent], PrivacyPlan, int, float]:
    m, first = len(included), real.shape[1]
    popular = np.sort(np.argsort(-np.asarray(real.sum(axis=0)).ravel(), kind="stable")[:COOCCURRENCE_REAL_ITEMS])
    decoys = m if broken == "shared-noise" else 0  # items nobody holds, for the second shared-noise release
    rows = silo(real, canary_rows(m, 1, first, first + m + decoys), included)
    plan = silo_plan(config, rows.shape[0])
    if not plan.cooccurrence:
        raise ConfigError("this run config plans no co-occurrence release (marginal-items = 0); nothing to audit.")
    sigma = plan.cooccurrence_noise
    items = np.concatenate([first + np.arange(m), popular])
    noise = rng_for(seed, "one-run-audit/cooccurrence-noise")
    if broken == "shared-noise":
        same = seed_for(seed, "one-run-audit/cooccurrence-shared")
        one = noisy_cooccurrence(rows, items, sigma, np.random.default_rng(same)).matrix
        swapped = np.concatenate([first + m + np.arange(m), popular])
        matrix = one - noisy_cooccurrence(rows, swapped, sigma, np.random.default_rng(same)).matrix
    elif broken == "uncharged":
        again = rng_for(seed, "one-run-audit/cooccurrence-again")
        matrix = (
            noisy_cooccurrence(rows, items, sigma, noise).matrix + noisy_cooccurrence(rows, items, sigma, again).matrix
        )
    else:
        matrix = noisy_cooccurrence(rows, items, sigma / (2.0 if broken == "half-noise" else 1.0), noise).matrix
    scores = np.diagonal(matrix)[:m].copy()
    charged = [cooccurrence_event(sigma)] * (2 if broken == "shared-noise" else 1)
    return scores, charged, plan, rows.shape[0], sigma


def _vae_round(
    real: sp.csr_matrix, included: np.ndarray, config: RunConfig, broken: str, seed: int
) -> tuple[np.ndarray, list[DPEvent], PrivacyPlan, int, float]:
    import torch

    from fedsynth.client.training import train_vae_round
    from fedsynth.common.models.vae import MultVAE

    if broken == "shared-noise":
        raise ConfigError(
            "--broken shared-noise is defined for the statistics and cooccurrence releases only (Adam's "
            "per-coordinate scaling keeps two DP-SGD runs' shared noise from cancelling); pick another --broken."
        )
    m, first = len(included), real.shape[1]
    num_items = first + m
    rows = silo(real, canary_rows(m, 1, first, num_items), included)
    plan = silo_plan(config, rows.shape[0])
    local, privacy = config.local(), config.privacy()
    torch.manual_seed(seed_for(seed, "one-run-audit/vae-init"))
    start = MultVAE.from_config(num_items, local.vae)
    targets = torch.from_numpy(canary_rows(m, 1, first, num_items).toarray().astype(np.float32))
    before = _canary_losses(start, targets)
    run_plan = dataclasses.replace(plan, vae_noise=plan.vae_noise / 2) if broken == "half-noise" else plan
    scores = np.zeros(m)
    for copy in range(2 if broken == "uncharged" else 1):
        model = MultVAE.from_config(num_items, local.vae)
        model.load_state_dict(start.state_dict())
        train_vae_round(model, rows, run_plan, privacy, local.vae, 0, seed_for(seed, f"one-run-audit/vae-{copy}"))
        scores += before - _canary_losses(model, targets)
    charged = [e for e in plan.round_events() if e.model == "vae"]
    return scores, charged, plan, rows.shape[0], plan.vae_noise


def _canary_losses(model: Any, targets: Any) -> np.ndarray:
    """Each canary's multinomial loss −log softmax(logits)·x at z = μ (eval mode), (m,)."""
    import torch

    from fedsynth.common.models.vae import vae_loss

    model.eval()
    out = []
    with torch.no_grad():
        for batch in torch.split(targets, 512):
            logits, mu, logvar = model(batch)
            out.append(vae_loss(logits, batch, mu, logvar, 0.0, reduction="none").numpy())
    return np.concatenate(out).astype(np.float64)


_AUDITS = {"statistics": _statistics, "cooccurrence": _cooccurrence, "vae-round": _vae_round}


def max_canaries(release: str) -> int | None:
    """The most canaries ``release`` can take (the co-occurrence's item limit), or None."""
    return MAX_MARGINAL_ITEMS - COOCCURRENCE_REAL_ITEMS if release == "cooccurrence" else None


def audit_release(
    release: str,
    target_epsilon: float,
    canaries: int,
    broken: str = "none",
    seed: int = 0,
    config: RunConfig | None = None,
    beta: float = DEFAULT_BETA,
    real: sp.csr_matrix | None = None,
) -> ReleaseAudit:
    """Audit one ``release`` of a silo whose run targets ``target_epsilon``, with ``canaries`` canaries.

    ``config``: the run config (defaults otherwise; its ε is replaced by ``target_epsilon``). ``real``: the
    silo's real users (default :func:`real_users` of ``seed``). Guesses: k₊ = k₋ = round(2.5·√m), fixed in
    advance (:func:`~fedsynth.common.privacy.one_run_audit.fixed_guesses`).
    """
    if release not in _AUDITS:
        raise ConfigError(f"--release must be one of {', '.join(RELEASES)} or all, got {release!r}.")
    if broken not in BROKEN:
        raise ConfigError(f"--broken must be one of {', '.join(BROKEN)}, got {broken!r}.")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"--epsilon must be positive and finite for an audit, got {target_epsilon:g}.")
    limit = max_canaries(release)
    if canaries < 2 or (limit is not None and canaries > limit):
        raise ConfigError(
            f"--canaries must be at least 2{f' and at most {limit:,} for the {release} release' if limit else ''}, "
            f"got {canaries}."
        )
    started = time.perf_counter()
    config = dataclasses.replace(config or RunConfig(), epsilon=float(target_epsilon))
    if release == "vae-round" and config.num_server_rounds == 0:  # a run without rounds releases no VAE round:
        config = dataclasses.replace(config, num_server_rounds=AUDITED_ROUNDS)  # audit one planned with rounds
    real = real_users(seed) if real is None else real
    included = inclusion(seed, canaries)
    scores, charged, plan, users, sigma = _AUDITS[release](real, included, config, broken, seed)
    accounted = epsilon(charged, plan.delta)
    result = audit_scores(scores, included, plan.delta, beta, fixed_guesses(canaries))
    return ReleaseAudit(release, broken, target_epsilon, accounted, result, sigma, users, time.perf_counter() - started)


def audit_mechanisms(
    releases: Sequence[str],
    epsilons: Sequence[float],
    canaries: int,
    broken: str = "none",
    seed: int = 0,
    config: RunConfig | None = None,
    beta: float = DEFAULT_BETA,
) -> list[ReleaseAudit]:
    """:func:`audit_release` for every release × ε (the co-occurrence's m capped at :func:`max_canaries`)."""
    real = real_users(seed)
    results = []
    for release in releases:
        limit = max_canaries(release)
        count = min(canaries, limit) if limit is not None else canaries
        for target in epsilons:
            results.append(audit_release(release, target, count, broken, seed, config, beta, real))
    return results


def audit_report(results: Sequence[ReleaseAudit], settings: dict[str, Any]) -> dict[str, Any]:
    """audit.json's content: the settings, every row, and the rows whose ε̂ exceeds the accounted ε."""
    return {
        "kind": "one-run mechanism audit (Steinke, Nasr, Jagielski 2023)",
        "settings": settings,
        "results": [r.to_dict() for r in results],
        "above_accounted": [
            f"{r.release} at epsilon {r.target_epsilon:g} ({r.broken})" for r in results if r.violation
        ],
    }


def write_audit(out: Path, results: Sequence[ReleaseAudit], settings: dict[str, Any]) -> Path:
    """Write ``out``/audit.json (atomically) and return its path."""
    from fedsynth.common.runtime.files import to_plain, write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    path = out / "audit.json"
    write_json_atomic(path, to_plain(audit_report(results, settings)))
    return path


def print_audit(console: Any, results: Sequence[ReleaseAudit]) -> None:
    """The table: release, variant, ε target, ε accounted, ε̂ at 1 − β, tightness, canaries, guesses, δ."""
    from rich import box
    from rich.table import Table

    beta = results[0].audit.beta if results else DEFAULT_BETA
    table = Table(title="One-run audit of the DP releases (one silo)", title_justify="left", box=box.SIMPLE_HEAD)
    columns = ("release", "broken", "ε target", "ε accounted", f"ε lower bound {1 - beta:.0%}", "tightness")
    for column in (*columns, "canaries", "right / guesses", "δ"):
        table.add_column(column, justify="left" if column in ("release", "broken") else "right", no_wrap=True)
    for r in results:
        mark = "[bold red]" if r.violation else ""
        table.add_row(
            r.release,
            r.broken,
            f"{r.target_epsilon:g}",
            f"{r.accounted:.3f}",
            f"{mark}{r.empirical:.3f}",
            f"{mark}{r.tightness:.2f}",
            f"{r.audit.canaries:,}",
            f"{r.audit.correct} / {r.audit.guesses}",
            f"{r.audit.delta:.2g}",
        )
    console.width = max(console.width, 120)  # whole columns when the output is not a wide terminal
    console.print(table)
