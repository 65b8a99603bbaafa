"""The one-run audit's statistics: an empirical lower bound on ε from guesses about m random canaries.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023). The
auditor draws S ∈ {0, 1}^m uniformly: canary i is put into the data when S_i = 1, each
independently with probability ½. The mechanism M runs once; from its output alone (and the
public list of the m canaries, never S) the auditor makes a guess T_i ∈ {in, out, abstain} for
every canary, at most r of them not abstaining, and counts the correct ones W = #{i : T_i = S_i}.

**Pure ε.** Take one canary i and condition on everything but S_i (the other canaries' bits,
which fix the rest of the input). The guess about i is a post-processing of M, which is ε-DP in
the one record S_i decides, so whatever the guess, P[T_i = S_i | rest] ≤ p := e^ε / (1 + e^ε):
the accuracy of randomized response, the best any ε-DP test of a fair coin can reach
(P[right] ≤ e^ε·P[wrong] and P[right] + P[wrong] = 1). Steinke et al. show (the δ = 0 case of
their main theorem, Theorem 3.1, through the connection between DP and generalization, without
paying for group privacy) that this per-canary bound holds for the guesses jointly: W is
stochastically dominated by the number of successes of r independent p-coins,

    P[W ≥ v] ≤ P[Binomial(r, p) ≥ v]          for every v.

**(ε, δ).** With δ > 0 each canary's guess can beat p with probability up to δ, and the m
canaries add up; the same theorem (and the p-value algorithm of their appendix) gives, with
W̃ ~ Binomial(r, p),

    P[W ≥ v] ≤ f_ε(v) := P[W̃ ≥ v] + 2mδ · max_{i = 1, …, v} P[v − i ≤ W̃ < v] / i,

the δ term weighing the tail just below v, each mass spread over the i steps it would need to
climb (the theorem takes the maximum over i = 1, …, m; for i > v the window is all of
P[W̃ < v] divided by a larger i, so i ≤ v gives the same maximum). δ = 0 gives back the pure
bound. This is what :func:`p_value` computes, exactly from the binomial's mass function and
survival function (scipy's regularised incomplete beta).

**The lower bound.** A run with v correct guesses out of r is evidence against (ε, δ)-DP when
f_ε(v) ≤ β: were M (ε, δ)-DP, a result this good would happen with probability at most β.
Since (ε*, δ)-DP implies (ε, δ)-DP for every ε ≥ ε*, if M is (ε*, δ)-DP the function
g(v) = min_{ε ≥ ε*} f_ε(v) bounds P[W ≥ v] too, and the event "some ε > ε* has f_ε(W) ≤ β" is
the event g(W) ≤ β, of probability ≤ β (with a the least w such that g(w) ≤ β, it lies inside
W ≥ a, of probability ≤ g(a) ≤ β; no monotonicity of g needed). So

    ε̂ = the largest ε with f_ε(v) ≤ β            (0 if there is none)

is below the true ε with probability at least 1 − β: :func:`epsilon_lower_bound`. f_ε need not be
monotone in ε (its δ term can fall as ε rises), so ε̂ is found on a grid that covers every ε up to
where the first term alone exceeds β, and refined by bisection from the last grid point with
f ≤ β; the value returned is always one at which f_ε(v) ≤ β was checked.

**Which guesses.** The auditor ranks the canaries by a score (higher: more likely in), guesses
"in" for the k₊ highest and "out" for the k₋ lowest and abstains on the rest (:func:`guess`).
Trying several (k₊, k₋) and keeping the best would test several hypotheses on one run. By default
one pair is fixed in advance, k₊ = k₋ = round(2.5·√m) (:func:`fixed_guesses`), tested at β; a grid
of pairs can be given instead, each tested at β / (grid size) (Bonferroni), so the best of them
still holds at confidence 1 − β (:func:`audit_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binom

from fedsynth.common.errors import ConfigError

DEFAULT_BETA = 0.05
# k₊ = k₋ = round(GUESS_SCALE·√m): the best single constant for Gaussian canary scores (signal 0.45 to 1.6 noise
# stds, m = 10³ to 5·10⁴, simulated apart from any audited run); fixed in advance, so one test at β.
GUESS_SCALE = 2.5
_GRID_POINTS = 400


def _check(m: int, r: int, v: int, delta: float) -> None:
    if not (0 <= v <= r <= m):
        raise ConfigError(f"the one-run audit needs 0 ≤ correct ≤ guesses ≤ canaries, got v={v}, r={r}, m={m}.")
    if not 0 <= delta <= 1:
        raise ConfigError(f"delta must be in [0, 1], got {delta}.")


def p_values(m: int, r: int, v: int, epsilons: np.ndarray, delta: float) -> np.ndarray:
    """f_ε(v) (module docstring) at each ε of ``epsilons`` (any shape), capped at 1."""
    _check(m, r, v, delta)
    eps = np.asarray(epsilons, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-eps))  # accuracy of ε-DP randomized response
    if v == 0:
        return np.ones_like(p)
    tail = binom.sf(v - 1, r, p)  # P[W̃ ≥ v]
    if delta == 0:
        return np.minimum(tail, 1.0)
    below = binom.pmf(np.arange(v - 1, -1, -1)[:, None], r, p.reshape(1, -1))  # row i-1: P[W̃ = v - i]
    spread = np.cumsum(below, axis=0) / np.arange(1, v + 1)[:, None]  # P[v - i ≤ W̃ < v] / i
    alpha = spread.max(axis=0).reshape(p.shape)
    return np.minimum(tail + 2.0 * m * delta * alpha, 1.0)


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """f_ε(v): the most that P[≥ v of r guesses right] can be, over m canaries, under (ε, δ)-DP."""
    return float(p_values(m, r, v, np.asarray([epsilon]), delta)[0])


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, beta: float = DEFAULT_BETA) -> float:
    """ε̂: the largest ε at which v of r guesses right (m canaries) has probability ≤ ``beta`` under (ε, δ)-DP.

    0 when even ε = 0 explains the result. Below the mechanism's true ε with probability ≥ 1 − β.
    """
    _check(m, r, v, delta)
    if not 0 < beta < 1:
        raise ConfigError(f"beta (1 - confidence) must be in (0, 1), got {beta}.")
    if v == 0:
        return 0.0
    # Above `top` the first term alone exceeds β, so no larger ε can qualify.
    top = 1.0
    while binom.sf(v - 1, r, 1.0 / (1.0 + math.exp(-top))) <= beta:
        top *= 2.0
        if top > 1e4:  # unreachable for r ≥ 1: the first term tends to 1
            break
    grid = np.linspace(0.0, top, _GRID_POINTS + 1)
    ok = np.flatnonzero(p_values(m, r, v, grid, delta) <= beta)
    if len(ok) == 0:
        return 0.0
    low = float(grid[ok[-1]])
    high = float(grid[min(ok[-1] + 1, len(grid) - 1)])
    for _ in range(40):  # bisection between the last passing grid point and the next (failing) one
        if high - low < 1e-9 * max(1.0, high):
            break
        middle = (low + high) / 2
        if p_value(m, r, v, middle, delta) <= beta:
            low = middle
        else:
            high = middle
    return low


def guess(scores: np.ndarray, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 ("in") for the ``k_plus`` highest scores, −1 ("out") for the ``k_minus`` lowest, 0 (abstain) otherwise.

    Ties are broken by position (a stable sort), which depends on the scores only, never on who was in.
    """
    scores = np.asarray(scores, dtype=np.float64)
    m = len(scores)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ConfigError(f"guesses k+ = {k_plus} and k- = {k_minus} must be ≥ 0 and add up to at most m = {m}.")
    order = np.argsort(scores, kind="stable")
    out = np.zeros(m, dtype=np.int64)
    out[order[m - k_plus :]] = 1
    out[order[:k_minus]] = -1
    return out


def count_correct(guesses: np.ndarray, included: np.ndarray) -> tuple[int, int]:
    """(r, v): guesses made and how many were right, for ``included`` (bool (m,)) the canaries really in."""
    guesses, included = np.asarray(guesses), np.asarray(included, dtype=bool)
    made = guesses != 0
    right = (guesses == 1) & included | (guesses == -1) & ~included
    return int(made.sum()), int(right.sum())


@dataclass(frozen=True)
class OneRunAudit:
    """The best (k₊, k₋) of the grid and what it proved: ε̂ at confidence 1 − β over the whole grid."""

    epsilon: float  # ε̂, the empirical lower bound
    canaries: int  # m
    guesses: int  # r = k₊ + k₋ of the best pair
    correct: int  # v of the best pair
    k_plus: int
    k_minus: int
    delta: float
    beta: float
    tests: int  # pairs tried, each at β / tests

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def fixed_guesses(m: int, scale: float = GUESS_SCALE) -> list[tuple[int, int]]:
    """The one (k₊, k₋) pair fixed in advance for m canaries: k₊ = k₋ = round(scale·√m), at most m // 2."""
    k = max(1, min(m // 2, round(scale * math.sqrt(m))))
    return [(k, k)] if m >= 2 else []


def audit_scores(
    scores: np.ndarray,
    included: np.ndarray,
    delta: float,
    beta: float = DEFAULT_BETA,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> OneRunAudit:
    """ε̂ from canary ``scores`` (m,) and the truth ``included`` (bool (m,)), the best of ``pairs`` at β / len(pairs).

    ``pairs`` (default :func:`fixed_guesses`: one pair) must be fixed before the scores are seen; with several,
    each is tested at β / len(pairs) (Bonferroni), so the best bound still holds at confidence 1 − β.
    """
    scores = np.asarray(scores, dtype=np.float64)
    m = len(scores)
    if len(np.asarray(included)) != m:
        raise ConfigError(f"{m} scores but {len(np.asarray(included))} inclusion bits.")
    pairs = list(pairs) if pairs is not None else fixed_guesses(m)
    if not pairs:
        raise ConfigError(f"the one-run audit needs at least 2 canaries, got {m}.")
    level = beta / len(pairs)
    best: OneRunAudit | None = None
    for k_plus, k_minus in pairs:
        r, v = count_correct(guess(scores, k_plus, k_minus), included)
        bound = epsilon_lower_bound(m, r, v, delta, level)
        if best is None or bound > best.epsilon:
            best = OneRunAudit(bound, m, r, v, k_plus, k_minus, delta, beta, len(pairs))
    assert best is not None
    return best
