"""Strong-generalization split (Liang et al. 2018, as in Mult-VAE).

Users, not interactions, are split: train users give their whole history to training;
validation and test users are never trained on, and each of their histories is cut into a
fold-in part (shown to the model) and a target part (to be predicted).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from fedsynth.common.config.sections import SplitConfig
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.errors import EmptyDataError
from fedsynth.common.runtime.seeding import rng_for


@dataclass(frozen=True)
class HeldOutUsers:
    """Held-out users with their histories cut in two.

    Attributes:
        users: shape (n,), row indices into the Interactions matrix.
        fold_in: CSR (n, n_items), the items given to the recommender.
        target: CSR (n, n_items), the items to predict; every row has at least one.
    """

    users: np.ndarray
    fold_in: sp.csr_matrix
    target: sp.csr_matrix

    def subset(self, positions: np.ndarray) -> HeldOutUsers:
        """The held-out users at ``positions`` (indices into ``users``)."""
        return HeldOutUsers(self.users[positions], self.fold_in[positions], self.target[positions])

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Split:
    """Train users (full rows), the validation / test held-out users and the reserved audit users.

    Audit users (``config.audit_fraction``) are never trained on nor evaluated: they are the
    non-members of membership-inference audits, drawn at random from the same population.
    """

    train_users: np.ndarray  # shape (n_train,), row indices into the Interactions matrix
    train: sp.csr_matrix  # (n_train, n_items)
    validation: HeldOutUsers
    test: HeldOutUsers
    audit_users: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (n_audit,) row indices
    audit: sp.csr_matrix | None = None  # (n_audit, n_items) full histories; None when none are reserved

    @classmethod
    def of(
        cls, data: Interactions, train: np.ndarray, validation: HeldOutUsers, test: HeldOutUsers, audit: np.ndarray
    ) -> Split:
        """The split with these users (row indices of ``data``), the training and audit rows read from it."""
        return cls(train, data.matrix[train], validation, test, audit, data.matrix[audit] if len(audit) else None)

    def summary(self) -> dict[str, int]:
        return {
            "train_users": len(self.train_users),
            "train_interactions": int(self.train.nnz),
            "validation_users": len(self.validation),
            "test_users": len(self.test),
            "audit_users": len(self.audit_users),
            "test_fold_in_interactions": int(self.test.fold_in.nnz),
            "test_target_interactions": int(self.test.target.nnz),
        }


def fold_in_target(
    rows: sp.csr_matrix, fold_in_fraction: float, rng: np.random.Generator
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Cut each row's items at random into fold-in and target parts.

    A row with n items gets ``max(1, round((1 - fold_in_fraction) · n))`` targets, at most
    n − 1, so both parts are non-empty for n ≥ 2. Assumes every row has at least 2 items.
    """
    rows = rows.tocsr()
    lengths = np.diff(rows.indptr)
    assert (lengths >= 2).all(), "held-out users need at least 2 interactions"
    n_target = np.clip(np.round((1.0 - fold_in_fraction) * lengths).astype(np.int64), 1, lengths - 1)
    row_of_entry = np.repeat(np.arange(rows.shape[0]), lengths)
    keys = rng.random(rows.nnz)
    order = np.lexsort((keys, row_of_entry))
    rank = np.empty(rows.nnz, dtype=np.int64)
    rank[order] = np.arange(rows.nnz) - np.repeat(rows.indptr[:-1], lengths)
    return cut(rows, rank < n_target[row_of_entry])


def cut(rows: sp.csr_matrix, is_target: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(fold-in, target) of canonical CSR ``rows``, ``is_target`` (nnz,) marking each stored entry in order
    (tocoo() of a canonical CSR keeps the entry order, so the mask lines up)."""
    coo = rows.tocoo()

    def part(mask: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=rows.shape)

    return part(~is_target), part(is_target)


def split_users(interactions: Interactions, config: SplitConfig) -> Split:
    """Split users into train / validation / test by ``config.seed``.

    Only users with at least 2 interactions can be held out (they need a fold-in and a
    target item); users with fewer always train.
    """
    rng = rng_for(config.seed, "split")
    n_users = interactions.num_users
    lengths = np.diff(interactions.matrix.indptr)
    n_validation = round(config.validation_fraction * n_users)
    n_test = round(config.test_fraction * n_users)
    eligible = rng.permutation(np.flatnonzero(lengths >= 2))
    if len(eligible) < n_validation + n_test:
        raise EmptyDataError(
            f"only {len(eligible)} users have the 2+ interactions needed to be held out, but the split asks "
            f"for {n_validation} validation and {n_test} test users. Lower the fractions or use more data."
        )
    validation_users = np.sort(eligible[:n_validation])
    test_users = np.sort(eligible[n_validation : n_validation + n_test])
    held = np.zeros(n_users, dtype=bool)
    held[validation_users] = True
    held[test_users] = True
    # Own random stream: reserving audit users leaves the validation / test users unchanged.
    n_audit = round(config.audit_fraction * n_users)
    audit_users = np.sort(rng_for(config.seed, "audit-users").permutation(np.flatnonzero(~held))[:n_audit])
    held[audit_users] = True
    train_users = np.flatnonzero(~held)
    if len(train_users) == 0:
        raise EmptyDataError("no training users are left after the split; lower the held-out fractions.")

    def held_out(users: np.ndarray) -> HeldOutUsers:
        fold_in, target = fold_in_target(interactions.matrix[users], config.fold_in_fraction, rng)
        return HeldOutUsers(users, fold_in, target)

    return Split.of(interactions, train_users, held_out(validation_users), held_out(test_users), audit_users)


def keyed_uniform(key: str, *parts: object) -> float:
    """A uniform number in [0, 1) from a keyed hash of ``parts`` (BLAKE2b, 64 bits): the same for the same
    user (and item) whoever else is in the data."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), key=key.encode()[:64], digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64


def split_users_by_id(interactions: Interactions, config: SplitConfig) -> Split:
    """A deployed node's split: each user's set, and a held-out user's fold-in / target cut, decided by a keyed
    hash of their own id (and their items' ids) alone.

    Under add/remove adjacency (docs/privacy.md) adding or removing one user must not move any other
    user between training and held-out, nor change their fold-in / target cut; a seeded permutation
    of all users (:func:`split_users`) reshuffles everyone. Here user u with h = H(seed, u) is
    validation if h < f_val, test if h < f_val + f_test, audit if h < f_val + f_test + f_audit
    (held-out sets need 2+ items; others train), and a held-out user's items are ordered by
    H(seed, u, item) with the first max(1, round((1 − fold_in_fraction)·n)) (at most n − 1) as targets.
    """
    key = f"fedsynth-split:{config.seed}"
    lengths = np.diff(interactions.matrix.indptr)
    draws = np.array([keyed_uniform(key, user) for user in interactions.user_ids])
    validation_end = config.validation_fraction
    test_end = validation_end + config.test_fraction
    audit_end = test_end + config.audit_fraction
    eligible = lengths >= 2
    validation_users = np.flatnonzero(eligible & (draws < validation_end))
    test_users = np.flatnonzero(eligible & (draws >= validation_end) & (draws < test_end))
    audit_users = np.flatnonzero((draws >= test_end) & (draws < audit_end) | ~eligible & (draws < audit_end))
    held = np.zeros(len(lengths), dtype=bool)
    held[np.concatenate([validation_users, test_users, audit_users])] = True
    train_users = np.flatnonzero(~held)
    if len(train_users) == 0 or len(test_users) == 0:
        raise EmptyDataError(
            "this node's data leaves no training users or no held-out test users after its split; it needs more "
            "users with 2+ interactions in the catalogue."
        )

    def held_out(users: np.ndarray) -> HeldOutUsers:
        rows = interactions.matrix[users].tocsr()
        rows.sort_indices()
        is_target = np.zeros(rows.nnz, dtype=bool)
        for row, user in enumerate(interactions.user_ids[users]):
            start, end = rows.indptr[row], rows.indptr[row + 1]
            items = interactions.item_ids[rows.indices[start:end]]
            order = np.argsort([keyed_uniform(key, user, item) for item in items], kind="stable")
            n = end - start
            n_target = int(np.clip(round((1.0 - config.fold_in_fraction) * n), 1, n - 1))
            is_target[start + order[:n_target]] = True
        return HeldOutUsers(users, *cut(rows, is_target))

    return Split.of(interactions, train_users, held_out(validation_users), held_out(test_users), audit_users)
