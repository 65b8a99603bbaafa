"""Batched top-K ranking metrics over sparse matrices, with already-seen items masked.

Assumptions (as in Liang et al.'s Mult-VAE evaluation):

* ``scores`` is a dense (batch, n_items) array for a batch of held-out users; items in the
  user's fold-in set are set to −inf before ranking, so they are never recommended;
* ``target`` is a CSR (batch, n_items) binary matrix of the items to be found; users with
  an empty target are skipped and counted;
* Recall@K = hits@K / min(K, |target|)  (so a perfect ranking scores 1 whatever |target|);
* NDCG@K = DCG@K / IDCG@K with DCG = Σ_{rank r < K} rel_r / log2(r + 2) and IDCG the DCG of
  min(K, |target|) hits at the top;
* HitRate@K = 1 if any target item is in the top K;
* Coverage@K = |⋃ users' top K| / n_items over all users added;
* TargetHitRate@K (only given ``targets``, an attack study's target items) = 1 if any target
  item is in the user's top K: the promotion an attack achieved among real users.

Results are sums and counts that can be merged across batches (and, later, across clients).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


def mask_seen(scores: np.ndarray, fold_in: sp.csr_matrix) -> np.ndarray:
    """Return ``scores`` (float copy) with every fold-in item set to −inf."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = fold_in.nonzero()
    masked[rows, cols] = -np.inf
    return masked


def top_k_items(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items per row, best first. Shape (batch, min(k, n_items))."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass
class RankingMetrics:
    """Accumulates Recall/NDCG/HitRate sums and recommended-item sets for cut-offs ``ks``."""

    ks: tuple[int, ...]
    num_items: int
    users: int = 0
    users_without_target: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    recommended: dict[int, np.ndarray] = field(default_factory=dict)
    targets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        names = ("recall", "ndcg", "hitrate") + (("target-hitrate",) if self.targets else ())
        for k in self.ks:
            for name in names:
                self.sums.setdefault(f"{name}@{k}", 0.0)
            self.recommended.setdefault(k, np.zeros(self.num_items, dtype=bool))

    def add(self, scores: np.ndarray, fold_in: sp.csr_matrix, target: sp.csr_matrix) -> None:
        """Add a batch: scores (b, n_items), fold_in and target CSR (b, n_items)."""
        assert scores.shape == fold_in.shape == target.shape, (scores.shape, fold_in.shape, target.shape)
        n_target = np.diff(target.indptr)
        keep = n_target > 0
        self.users_without_target += int((~keep).sum())
        if not keep.any():
            return
        scores, fold_in, target, n_target = scores[keep], fold_in[keep], target[keep], n_target[keep]
        ranked = top_k_items(mask_seen(scores, fold_in), max(self.ks))
        hits = np.take_along_axis(target.toarray() > 0, ranked, axis=1)  # (b, K_max); scores are dense anyway
        discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
        for k in self.ks:
            hits_k = hits[:, :k]
            n_hits = hits_k.sum(axis=1)
            ideal = np.minimum(k, n_target)
            idcg = np.cumsum(discounts)[np.minimum(ideal, ranked.shape[1]) - 1]
            self.sums[f"recall@{k}"] += float((n_hits / ideal).sum())
            self.sums[f"ndcg@{k}"] += float(((hits_k * discounts[:k]).sum(axis=1) / idcg).sum())
            self.sums[f"hitrate@{k}"] += float((n_hits > 0).sum())
            if self.targets:
                self.sums[f"target-hitrate@{k}"] += float(np.isin(ranked[:, :k], self.targets).any(axis=1).sum())
            self.recommended[k][ranked[:, :k].ravel()] = True
        self.users += int(keep.sum())

    def merge(self, other: RankingMetrics) -> None:
        """Add another accumulator's sums (same ks and catalogue)."""
        assert self.ks == other.ks and self.num_items == other.num_items and self.targets == other.targets
        self.users += other.users
        self.users_without_target += other.users_without_target
        for name, value in other.sums.items():
            self.sums[name] += value
        for k in self.ks:
            self.recommended[k] |= other.recommended[k]

    def to_numbers(self) -> dict[str, int | float | list[int]]:
        """Flat sums, counts and, per K, the recommended-item indicator: what a client sends back."""
        out: dict[str, int | float | list[int]] = {
            "users": self.users,
            "users-without-target": self.users_without_target,
        }
        out.update({f"sum:{name}": value for name, value in self.sums.items()})
        out.update({f"recommended@{k}": self.recommended[k].astype(int).tolist() for k in self.ks})
        return out

    @classmethod
    def from_numbers(
        cls, numbers: dict[str, object], ks: tuple[int, ...], num_items: int, targets: tuple[int, ...] = ()
    ) -> RankingMetrics:
        """The accumulator :meth:`to_numbers` described."""
        users, without = int(numbers["users"]), int(numbers["users-without-target"])  # type: ignore[call-overload]
        metrics = cls(ks, num_items, users, without, targets=targets)
        for name in metrics.sums:
            metrics.sums[name] = float(numbers[f"sum:{name}"])  # type: ignore[arg-type]
        for k in ks:
            metrics.recommended[k] = np.asarray(numbers[f"recommended@{k}"], dtype=bool)
        return metrics

    def result(self) -> dict[str, float]:
        """Means over users, and coverage@K; NaN where no user was added."""
        out: dict[str, float] = {}
        for name, total in self.sums.items():
            out[name] = total / self.users if self.users else float("nan")
        for k in self.ks:
            out[f"coverage@{k}"] = float(self.recommended[k].sum()) / self.num_items
        return out
