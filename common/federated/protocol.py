"""The typed wire protocol of a round: request and reply records, built and read in one place.

A Flower message's content is a ``RecordDict`` of named records (:mod:`fedsynth.common.federated.wire`
holds the names). Both sides use these types instead of reading records by hand:

- the server builds a request with ``to_record()`` and reads a reply with ``from_record()``;
- the node reads the request with ``from_record()`` and answers with ``to_record()``.

``from_record`` checks every field's type and raises :class:`ProtocolError` naming the field, so
a malformed message is refused with a reason instead of failing deep in training.

What a reply may carry is fixed here, and only here: DP releases (arrays) and public numbers
(:class:`Spent`: users, cumulative ε, δ). A node never sends losses or any other function of its
data that is not accounted (``tests/test_only_accounted_outputs.py``).

    Releases (plain):        node → server   StatisticsReply / CooccurrenceReply {arrays: the noisy release,
                                                                                 metrics: Spent + noise-std}
    Train round r (plain):   server → node   TrainRequest  {arrays: global bundle, config: round, plan, identity}
                             node → server   TrainReply    {arrays: trained bundle, metrics: Spent (+ replayed)}
                                          or Refusal       {metrics: Spent (refused = 1), config: reason}
    Start query (query):     server → node   AdmissionQuery {config: planned/first round, needs-*, identity}
                             node → server   AdmissionReply {metrics: num-items, users, ε, ε cap;
                                                             config: item-ids}  or Refusal
    Secure release stage 3:  node → server   MaskedReply    {arrays: masked vector, metrics: Spent (+ variance)}
    Evaluation (evaluate):   server → node   EvaluationRequest {arrays: packed recommender, config: kind, ks,
                                                                targets, setting:*, planned rounds, label, identity}
                             node → server   DPEvaluationReply {metrics: NoisySums + ε, ε of evaluations, δ}
                                          or ExactEvaluationReply {metrics: exact sums (simulation only)}
                                          or Refusal
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.common.errors import FedsynthError
from fedsynth.common.federated import wire

MetricValue = int | float | list[int] | list[float]  # what a Flower MetricRecord holds


class ProtocolError(FedsynthError):
    """A message that does not follow the protocol: a record or a field is missing or of the wrong type."""


def _config(content: RecordDict, what: str) -> ConfigRecord:
    if wire.CONFIG not in content.config_records:
        raise ProtocolError(f"{what}: the message has no {wire.CONFIG!r} config record")
    return content.config_records[wire.CONFIG]


def _metrics(content: RecordDict, what: str) -> MetricRecord:
    if wire.METRICS not in content.metric_records:
        raise ProtocolError(f"{what}: the message has no {wire.METRICS!r} metric record")
    return content.metric_records[wire.METRICS]


def _arrays(content: RecordDict, what: str) -> ArrayRecord:
    if wire.ARRAYS not in content.array_records:
        raise ProtocolError(f"{what}: the message has no {wire.ARRAYS!r} array record")
    return content.array_records[wire.ARRAYS]


def _integer(record: ConfigRecord | MetricRecord, key: str, what: str, default: int | None = None) -> int:
    if key not in record and default is not None:
        return default
    try:
        value = wire.number(record, key)
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"{what}: field {key!r} should be a number ({exc})") from None
    if value != int(value):
        raise ProtocolError(f"{what}: field {key!r} should be a whole number, got {value}")
    return int(value)


def _number(record: ConfigRecord | MetricRecord, key: str, what: str, default: float | None = None) -> float:
    if key not in record and default is not None:
        return default
    try:
        return wire.number(record, key)
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"{what}: field {key!r} should be a number ({exc})") from None


@dataclass(frozen=True)
class Identity:
    """Who asks, as the server says it (every request carries it): the run directory's key, stable across
    resumes, and a free-text requester (host, output directory). The node's ledger records both; Flower's
    run id comes from the node's own SuperLink, not from here."""

    run_key: str = ""
    requester: str = ""

    def fields(self) -> dict[str, wire.ConfigValue]:
        return {wire.RUN_KEY: self.run_key, wire.REQUESTER: self.requester} if self.run_key else {}

    @classmethod
    def from_config(cls, record: ConfigRecord) -> Identity:
        return cls(str(record.get(wire.RUN_KEY, "")), str(record.get(wire.REQUESTER, "")))

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Identity:
        return cls(fields.get(wire.RUN_KEY, ""), fields.get(wire.REQUESTER, ""))


@dataclass(frozen=True)
class TrainRequest:
    """Round ``server_round`` of ``planned_rounds``: train locally from the global bundle ``arrays``."""

    server_round: int
    planned_rounds: int
    arrays: ArrayRecord
    identity: Identity = field(default_factory=Identity)
    update_norm_bound: float | None = None  # secure rounds with norm-bound: the L2 bound on w_k − w_g

    def __post_init__(self) -> None:
        if not 1 <= self.server_round <= self.planned_rounds:
            raise ProtocolError(f"round {self.server_round} is outside the planned rounds 1..{self.planned_rounds}")
        if self.update_norm_bound is not None and not 0 < self.update_norm_bound < float("inf"):
            raise ProtocolError(f"field {wire.UPDATE_NORM_BOUND!r} should be positive, got {self.update_norm_bound}")

    def to_record(self) -> RecordDict:
        config: dict[str, wire.ConfigValue] = {
            wire.SERVER_ROUND: self.server_round,
            wire.PLANNED_ROUNDS: self.planned_rounds,
        }
        if self.update_norm_bound is not None:
            config[wire.UPDATE_NORM_BOUND] = self.update_norm_bound
        return RecordDict({wire.ARRAYS: self.arrays, wire.CONFIG: ConfigRecord({**config, **self.identity.fields()})})

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainRequest:
        what = "train request"
        config = _config(content, what)
        bound = _number(config, wire.UPDATE_NORM_BOUND, what) if wire.UPDATE_NORM_BOUND in config else None
        return cls(
            _integer(config, wire.SERVER_ROUND, what),
            _integer(config, wire.PLANNED_ROUNDS, what),
            _arrays(content, what),
            Identity.from_config(config),
            bound,
        )


@dataclass(frozen=True)
class Spent:
    """What every reply says about privacy (public numbers): the node's users and its cumulative ε, in total
    and per release or model, counting all noise (the guarantee) and only its own noise (secure sums), and δ."""

    num_examples: int
    epsilon: float
    delta: float
    epsilon_own_noise: float
    epsilon_vae: float = 0.0
    epsilon_gan: float = 0.0
    epsilon_statistics: float = 0.0
    epsilon_cooccurrence: float = 0.0

    _KEYS: ClassVar[dict[str, str]] = {
        "epsilon_vae": wire.EPSILON_VAE,
        "epsilon_gan": wire.EPSILON_GAN,
        "epsilon_statistics": wire.EPSILON_STATISTICS,
        "epsilon_cooccurrence": wire.EPSILON_COOCCURRENCE,
    }

    def to_metrics(self) -> dict[str, MetricValue]:
        parts = {key: getattr(self, name) for name, key in self._KEYS.items()}
        return {
            wire.NUM_EXAMPLES: self.num_examples,
            wire.REFUSED: 0,
            wire.EPSILON: self.epsilon,
            **parts,
            wire.EPSILON_OWN_NOISE: self.epsilon_own_noise,
            wire.DELTA: self.delta,
        }

    @classmethod
    def from_metrics(cls, metrics: MetricRecord, what: str = "reply") -> Spent:
        epsilon = _number(metrics, wire.EPSILON, what)
        return cls(
            _integer(metrics, wire.NUM_EXAMPLES, what),
            epsilon,
            _number(metrics, wire.DELTA, what, default=0.0),
            _number(metrics, wire.EPSILON_OWN_NOISE, what, default=epsilon),
            **{name: _number(metrics, key, what, default=0.0) for name, key in cls._KEYS.items()},
        )


@dataclass(frozen=True)
class TrainReply:
    """A trained bundle (plain rounds) and what the node has spent; ``replayed``: the saved reply of a round
    already charged to this run, sent again (no new ε)."""

    arrays: ArrayRecord
    spent: Spent
    replayed: bool = False
    update_norm: float | None = None  # a secure round: ‖w_k − w_g‖ before any bound

    def to_record(self) -> RecordDict:
        metrics: dict[str, MetricValue] = {**self.spent.to_metrics(), **({wire.REPLAYED: 1} if self.replayed else {})}
        if self.update_norm is not None:
            metrics[wire.UPDATE_NORM] = self.update_norm
        return RecordDict({wire.ARRAYS: self.arrays, wire.METRICS: MetricRecord(metrics)})

    @classmethod
    def from_record(cls, content: RecordDict) -> TrainReply:
        what = "train reply"
        metrics = _metrics(content, what)
        return cls(_arrays(content, what), Spent.from_metrics(metrics, what), wire.REPLAYED in metrics)


def _budget(epsilon: float, own_noise: float, delta: float) -> dict[str, MetricValue]:
    """A reply's account of the node's cumulative spend: ε, ε counting only its own noise, δ."""
    return {wire.EPSILON: epsilon, wire.EPSILON_OWN_NOISE: own_noise, wire.DELTA: delta}


@dataclass(frozen=True)
class Refusal:
    """A node's refusal: the reason, and the ε it had already spent (0 when it could not open its ledger)."""

    reason: str
    epsilon: float = 0.0
    epsilon_own_noise: float = 0.0
    delta: float = 0.0

    def to_record(self) -> RecordDict:
        metrics = {wire.REFUSED: 1, wire.NUM_EXAMPLES: 0, **_budget(self.epsilon, self.epsilon_own_noise, self.delta)}
        return RecordDict({wire.METRICS: MetricRecord(metrics), wire.CONFIG: ConfigRecord({wire.REASON: self.reason})})

    @classmethod
    def from_record(cls, content: RecordDict) -> Refusal | None:
        """The refusal in ``content``, or None if it is not one."""
        if wire.METRICS not in content.metric_records or not content.metric_records[wire.METRICS].get(wire.REFUSED):
            return None
        metrics, what = content.metric_records[wire.METRICS], "refusal"
        epsilon = _number(metrics, wire.EPSILON, what)
        reason = str(_config(content, what).get(wire.REASON, ""))
        own = _number(metrics, wire.EPSILON_OWN_NOISE, what, default=epsilon)
        return cls(reason, epsilon, own, _number(metrics, wire.DELTA, what, default=0.0))


@dataclass(frozen=True)
class StatisticsReply:
    """A plain first-order release (``query.statistics``, or ``query.cooccurrence`` with the first order
    instead): noisy item counts (n_items,), a noisy history-length histogram (n_bins,), the Gaussian noise's
    std per coordinate (public) and what the node has spent."""

    item_counts: np.ndarray
    length_histogram: np.ndarray
    noise_std: float
    spent: Spent

    def to_record(self) -> RecordDict:
        vectors = {wire.ITEM_COUNTS: self.item_counts, wire.LENGTH_HISTOGRAM: self.length_histogram}
        return _release_record(vectors, self.noise_std, self.spent)

    @classmethod
    def from_record(cls, content: RecordDict) -> StatisticsReply:
        what = "statistics reply"
        arrays, metrics = _arrays(content, what), _metrics(content, what)
        counts, lengths = (_vector(arrays, key, what) for key in (wire.ITEM_COUNTS, wire.LENGTH_HISTOGRAM))
        return cls(counts, lengths, _noise_std(metrics, what), _releasing(Spent.from_metrics(metrics, what), what))


@dataclass(frozen=True)
class CooccurrenceReply:
    """A plain second-order release (``query.cooccurrence``): the upper triangle, row by row, of the node's
    noisy co-occurrence over the M requested items (M(M+1)/2,), its noise std per entry and what it spent."""

    upper: np.ndarray
    noise_std: float
    spent: Spent

    def to_record(self) -> RecordDict:
        return _release_record({wire.COOCCURRENCE: self.upper}, self.noise_std, self.spent)

    @classmethod
    def from_record(cls, content: RecordDict) -> CooccurrenceReply:
        what = "co-occurrence reply"
        arrays, metrics = _arrays(content, what), _metrics(content, what)
        upper = _vector(arrays, wire.COOCCURRENCE, what)
        return cls(upper, _noise_std(metrics, what), _releasing(Spent.from_metrics(metrics, what), what))


def _noise_std(metrics: MetricRecord, what: str) -> float:
    """A release's noise std per coordinate: finite and ≥ 0 (the robust rules and the fit divide by it)."""
    std = _number(metrics, wire.NOISE_STD, what)
    if not (math.isfinite(std) and std >= 0):
        raise ProtocolError(f"{what}: {wire.NOISE_STD!r} should be a finite number >= 0, got {std!r}")
    return std


def _releasing(spent: Spent, what: str) -> Spent:
    """``spent`` of a node that released something: at least one user (the robust rules divide by it; a node
    with no users refuses instead)."""
    if spent.num_examples < 1:
        raise ProtocolError(f"{what}: {wire.NUM_EXAMPLES!r} should be at least 1 for a release, got "
                            f"{spent.num_examples}")  # fmt: skip
    return spent


def _release_record(vectors: dict[str, np.ndarray], noise_std: float, spent: Spent) -> RecordDict:
    """A plain release's reply: its noisy vectors, what the node spent and the noise std (public)."""
    arrays = ArrayRecord({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in vectors.items()})
    metrics: dict[str, MetricValue] = {**spent.to_metrics(), wire.NOISE_STD: noise_std}
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})


def _vector(arrays: ArrayRecord, key: str, what: str) -> np.ndarray:
    if key not in arrays:
        raise ProtocolError(f"{what}: the array record has no {key!r}")
    values = arrays[key].numpy()
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ProtocolError(f"{what}: {key!r} should be a finite vector, got shape {values.shape}")
    return values


def _integers(record: ConfigRecord, key: str, what: str) -> list[int]:
    try:
        return wire.integers(record, key)
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"{what}: field {key!r} should be a list of whole numbers ({exc})") from None


def _texts(record: ConfigRecord, key: str, what: str) -> list[str]:
    try:
        return wire.texts(record, key)
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"{what}: field {key!r} should be a list of strings ({exc})") from None


def _text(record: ConfigRecord, key: str, what: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{what}: field {key!r} should be a string, got {value!r}")
    return value


@dataclass(frozen=True)
class AdmissionQuery:
    """The start query (action ``query``, nothing spent): does the run's remaining plan fit the node's budget?

    ``planned_rounds`` None asks only for the catalogue (no plan, no check). Otherwise: the run's planned
    rounds, the first round it will ask for (> 1 when resumed), and whether it still has to release the DP
    statistics and the co-occurrence (False once the server holds them)."""

    planned_rounds: int | None = None
    first_round: int = 1
    needs_statistics: bool = True
    needs_cooccurrence: bool = True
    identity: Identity = field(default_factory=Identity)

    def to_record(self) -> RecordDict:
        plan: dict[str, wire.ConfigValue] = {}
        if self.planned_rounds is not None:
            plan = {
                wire.PLANNED_ROUNDS: self.planned_rounds,
                wire.FIRST_ROUND: self.first_round,
                wire.NEEDS_STATISTICS: int(self.needs_statistics),
                wire.NEEDS_COOCCURRENCE: int(self.needs_cooccurrence),
            }
        return RecordDict({wire.CONFIG: ConfigRecord({**plan, **self.identity.fields()})})

    @classmethod
    def from_record(cls, content: RecordDict) -> AdmissionQuery:
        """The query in ``content``; a message without a config record asks only for the catalogue."""
        what, config = "admission query", content.config_records.get(wire.CONFIG, ConfigRecord())
        if wire.PLANNED_ROUNDS not in config:
            return cls(identity=Identity.from_config(config))
        return cls(
            _integer(config, wire.PLANNED_ROUNDS, what),
            _integer(config, wire.FIRST_ROUND, what, default=1),
            _integer(config, wire.NEEDS_STATISTICS, what, default=1) != 0,
            _integer(config, wire.NEEDS_COOCCURRENCE, what, default=1) != 0,
            Identity.from_config(config),
        )


@dataclass(frozen=True)
class AdmissionReply:
    """A node's answer to the start query (public numbers only): the shared catalogue's original item ids,
    its size, the node's user count and, when the run's plan was checked and fits, the node's cumulative ε
    before this run and its lifetime cap (a refusal is a :class:`Refusal`). ``num_items`` is the catalogue's
    size: read as ``len(item_ids)`` when absent."""

    item_ids: list[str]
    num_items: int
    num_examples: int
    epsilon: float | None = None
    epsilon_cap: float | None = None

    def to_record(self) -> RecordDict:
        metrics: dict[str, MetricValue] = {
            wire.NUM_ITEMS: self.num_items,
            wire.NUM_EXAMPLES: self.num_examples,
            wire.REFUSED: 0,
        }
        if self.epsilon is not None and self.epsilon_cap is not None:
            metrics.update({wire.EPSILON: self.epsilon, wire.EPSILON_CAP: self.epsilon_cap})
        catalogue = ConfigRecord({wire.ITEM_IDS: self.item_ids})
        return RecordDict({wire.METRICS: MetricRecord(metrics), wire.CONFIG: catalogue})

    @classmethod
    def from_record(cls, content: RecordDict) -> AdmissionReply:
        what = "admission reply"
        metrics = _metrics(content, what)
        optional = {
            key: _number(metrics, key, what) if key in metrics else None for key in (wire.EPSILON, wire.EPSILON_CAP)
        }
        item_ids = _texts(_config(content, what), wire.ITEM_IDS, what)
        return cls(
            item_ids,
            _integer(metrics, wire.NUM_ITEMS, what, default=len(item_ids)),
            _integer(metrics, wire.NUM_EXAMPLES, what),
            optional[wire.EPSILON],
            optional[wire.EPSILON_CAP],
        )


def planned_rounds(content: RecordDict, what: str) -> int:
    """The run's planned rounds, which every release request (statistics, co-occurrence, secure stages) carries."""
    return _integer(_config(content, what), wire.PLANNED_ROUNDS, what)


RecommenderSettings = dict[str, int | float | str]  # a packed recommender's settings (recommenders.transfer)


@dataclass(frozen=True)
class EvaluationRequest:
    """A federated evaluation (an ``evaluate`` message): one packed recommender (``kind``, its tensors in
    ``arrays``, its ``settings``; see :mod:`fedsynth.common.recommenders.transfer`), the cut-offs ``ks``,
    an attack study's ``targets`` (catalogue indices), and, for a DP-evaluating node, the run's planned
    rounds and the result row's ``label`` (what its ledger records)."""

    kind: str
    arrays: ArrayRecord
    ks: tuple[int, ...]
    targets: tuple[int, ...] = ()
    settings: RecommenderSettings = field(default_factory=dict)
    planned_rounds: int | None = None
    label: str | None = None
    identity: Identity = field(default_factory=Identity)

    def to_record(self) -> RecordDict:
        config: dict[str, wire.ConfigValue] = {"kind": self.kind, "ks": list(self.ks), wire.TARGETS: list(self.targets)}
        config.update({wire.SETTING_PREFIX + k: v for k, v in self.settings.items()})
        config.update(self.identity.fields())
        if self.planned_rounds is not None:
            config[wire.PLANNED_ROUNDS] = self.planned_rounds
        if self.label is not None:
            config[wire.EVALUATION_LABEL] = self.label
        return RecordDict({wire.ARRAYS: self.arrays, wire.CONFIG: ConfigRecord(config)})

    @classmethod
    def from_record(cls, content: RecordDict) -> EvaluationRequest:
        what = "evaluation request"
        config = _config(content, what)
        targets = _integers(config, wire.TARGETS, what) if wire.TARGETS in config else []
        planned = _integer(config, wire.PLANNED_ROUNDS, what) if wire.PLANNED_ROUNDS in config else None
        label = str(config[wire.EVALUATION_LABEL]) if wire.EVALUATION_LABEL in config else None
        return cls(
            _text(config, "kind", what),
            _arrays(content, what),
            tuple(_integers(config, "ks", what)),
            tuple(targets),
            _settings(config, what),
            planned,
            label,
            Identity.from_config(config),
        )


def _settings(config: ConfigRecord, what: str) -> RecommenderSettings:
    settings: RecommenderSettings = {}
    for key, value in config.items():
        if not key.startswith(wire.SETTING_PREFIX):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ProtocolError(f"{what}: field {key!r} should be a number or a string, got {value!r}")
        settings[key[len(wire.SETTING_PREFIX) :]] = value
    return settings


@dataclass(frozen=True)
class ExactEvaluationReply:
    """Exact metric sums (simulation only: a measurement, not private): ``numbers`` are
    ``RankingMetrics.to_numbers()`` (users, users-without-target, sum:<metric>, recommended@K indicators)."""

    numbers: dict[str, MetricValue]

    def to_record(self) -> RecordDict:
        numbers: dict[str, MetricValue] = {**self.numbers, wire.DP_EVALUATION: 0, wire.REFUSED: 0}
        return RecordDict({wire.METRICS: MetricRecord(numbers)})

    @classmethod
    def from_record(cls, content: RecordDict) -> ExactEvaluationReply:
        what = "exact evaluation reply"
        metrics = _metrics(content, what)
        _integer(metrics, "users", what)
        return cls({k: v for k, v in metrics.items() if k not in (wire.DP_EVALUATION, wire.REFUSED)})


@dataclass(frozen=True)
class NoisySums:
    """A DP evaluation's release: the noisy user count, the noisy per-metric sums (by metric name, e.g.
    ``ndcg@10``) and the Gaussian noise's std per coordinate (public)."""

    users: float
    sums: dict[str, float]
    noise_std: float

    def to_metrics(self) -> dict[str, MetricValue]:
        sums: dict[str, MetricValue] = {f"sum:{name}": value for name, value in self.sums.items()}
        return {"users": self.users, **sums, wire.NOISE_STD: self.noise_std}

    @classmethod
    def from_metrics(cls, metrics: MetricRecord, what: str = "DP evaluation reply") -> NoisySums:
        sums = {key[4:]: _number(metrics, key, what) for key in metrics if key.startswith("sum:")}
        return cls(_number(metrics, "users", what), sums, _number(metrics, wire.NOISE_STD, what))


@dataclass(frozen=True)
class DPEvaluationReply:
    """A DP evaluation's reply (every deployed node): the noisy sums and what the node has spent, in total,
    on its evaluations, counting only its own noise, and δ."""

    sums: NoisySums
    epsilon: float
    epsilon_evaluation: float
    epsilon_own_noise: float
    delta: float

    def to_record(self) -> RecordDict:
        metrics: dict[str, MetricValue] = {
            **self.sums.to_metrics(),
            wire.DP_EVALUATION: 1,
            wire.REFUSED: 0,
            **_budget(self.epsilon, self.epsilon_own_noise, self.delta),
            wire.EPSILON_EVALUATION: self.epsilon_evaluation,
        }
        return RecordDict({wire.METRICS: MetricRecord(metrics)})

    @classmethod
    def from_record(cls, content: RecordDict) -> DPEvaluationReply:
        what = "DP evaluation reply"
        metrics = _metrics(content, what)
        return cls(
            NoisySums.from_metrics(metrics, what),
            _number(metrics, wire.EPSILON, what),
            _number(metrics, wire.EPSILON_EVALUATION, what),
            _number(metrics, wire.EPSILON_OWN_NOISE, what),
            _number(metrics, wire.DELTA, what, default=0.0),
        )


def flag(content: RecordDict, name: str) -> bool:
    """A 0/1 metric of a reply (``refused``, ``dp-evaluation``, ``replayed``); absent: False."""
    metrics = content.metric_records.get(wire.METRICS)
    return metrics is not None and name in metrics and _integer(metrics, name, "reply") != 0


@dataclass(frozen=True)
class MaskedReply:
    """A secure release's stage-3 reply (a statistics, co-occurrence or FedSGD step): the node's masked vector
    (residues mod 2^b, uint64, the aggregation's length), what it has spent, and the Skellam variance it added
    (None in a secure round's update reply, which carries none)."""

    masked: np.ndarray
    spent: Spent
    noise_variance: float | None = None
    update_norm: float | None = None  # a secure round's update reply: ‖w_k − w_g‖ before any bound

    def to_record(self) -> RecordDict:
        variance = {} if self.noise_variance is None else {wire.NOISE_VARIANCE: self.noise_variance}
        metrics: dict[str, MetricValue] = {**self.spent.to_metrics(), **variance}
        arrays = ArrayRecord({wire.MASKED: Array(self.masked)})
        return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})

    @classmethod
    def from_record(cls, content: RecordDict) -> MaskedReply:
        what = "masked reply"
        arrays, metrics = _arrays(content, what), _metrics(content, what)
        if wire.MASKED not in arrays:
            raise ProtocolError(f"{what}: the array record has no {wire.MASKED!r}")
        masked = arrays[wire.MASKED].numpy()
        if masked.ndim != 1:
            raise ProtocolError(f"{what}: field {wire.MASKED!r} should be a vector, got shape {masked.shape}")
        variance = _number(metrics, wire.NOISE_VARIANCE, what) if wire.NOISE_VARIANCE in metrics else None
        norm = _number(metrics, wire.UPDATE_NORM, what) if wire.UPDATE_NORM in metrics else None
        return cls(masked, Spent.from_metrics(metrics, what), variance, norm)
