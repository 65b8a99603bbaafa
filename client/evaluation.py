"""Federated evaluation on a client: score a recommender the server sent on this node's held-out users.

The request carries one packed recommender (:mod:`fedsynth.common.recommenders.transfer`), the cut-offs and
the run's identity. What leaves depends on where the node runs:

* **DP (every deployed node; simulation with ``evaluation = "dp"``)**: the per-user metric sums and
  the user count, with Gaussian noise, charged to the node's ledger like any release. Adjacency is
  one held-out user added or removed; a user with a target adds 1 to the count and a value in
  [0, 1] to each of the m sums (Recall, NDCG, HitRate at every K; TargetHitRate in attack studies),
  a user without one adds nothing, so the vector (count, sums) has L2 sensitivity Δ = √(1 + m).
  Each release is the Gaussian mechanism N(0, (σ_eval Δ)²) per coordinate: one event
  (σ_eval, q = 1, 1 step), σ_eval from the plan's ``evaluation-share`` of ε spread over
  ``evaluation-releases`` evaluations; a run asking for more is refused. Which items were
  recommended (catalogue coverage) is not released.
* **exact (simulation only, the default there)**: exact sums and counts and which items were
  recommended, for coverage: a *measurement tool*, not private, labelled so in metrics.json. A
  deployed node refuses it (:func:`fedsynth.client.data.check_node_settings`).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedsynth.client.budget import NodeBudget
from fedsynth.client.handlers import open_ledger, privacy_plan, refusal, release_seed
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.split import HeldOutUsers
from fedsynth.common.errors import FedsynthError
from fedsynth.common.evaluation.metrics import RankingMetrics
from fedsynth.common.evaluation.scoring import accumulate
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import (
    DPEvaluationReply,
    EvaluationRequest,
    ExactEvaluationReply,
    MetricValue,
    NoisySums,
    ProtocolError,
)
from fedsynth.common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger, RunIdentity
from fedsynth.common.privacy.plan import EVALUATION, PrivacyPlan
from fedsynth.common.recommenders.transfer import unpack


def evaluation_settings(request: EvaluationRequest) -> EvalConfig:
    """The request's cut-offs and targets (EvalConfig refuses repeated cut-offs)."""
    return EvalConfig(ks=request.ks, targets=request.targets)


def exact_metrics(request: EvaluationRequest, held_out: HeldOutUsers) -> RankingMetrics:
    """The sent recommender's metric sums over ``held_out`` (fold-in → target), exactly."""
    recommender = unpack(request.kind, tensors_without_copy(request.arrays), request.settings)
    return accumulate(recommender, held_out, evaluation_settings(request))


def handle_evaluate(content: RecordDict, held_out: HeldOutUsers) -> RecordDict:
    """Exact metric sums (simulation only: a measurement, not private) and the recommended-item indicators."""
    numbers = exact_metrics(EvaluationRequest.from_record(content), held_out).to_numbers()
    return ExactEvaluationReply(dict(numbers)).to_record()


def sensitivity(metrics: RankingMetrics) -> float:
    """Δ = √(1 + m): one user moves the count by 1 and each of the m sums by at most 1."""
    return float(np.sqrt(1 + len(metrics.sums)))


def noisy_numbers(metrics: RankingMetrics, noise_multiplier: float, rng: np.random.Generator) -> dict[str, float]:
    """The count and the sums, each + N(0, (σ Δ)²): the Gaussian mechanism on (users, sums)."""
    std = noise_multiplier * sensitivity(metrics)
    names = sorted(metrics.sums)
    noise = rng.normal(0.0, std, 1 + len(names)) if std > 0 else np.zeros(1 + len(names))
    numbers = {"users": metrics.users + float(noise[0])}
    numbers.update({f"sum:{name}": metrics.sums[name] + float(z) for name, z in zip(names, noise[1:], strict=True)})
    numbers[wire.NOISE_STD] = std
    return numbers


def check_evaluation(ledger: PrivacyLedger, plan: PrivacyPlan, run: RunIdentity) -> None:
    """Refuse a DP evaluation the run did not plan, one past the run's planned count, or one over the cap."""
    if plan.evaluation_releases == 0:
        raise PrivacyBudgetExceeded(
            "this run set aside no budget for DP evaluation (evaluation-share = 0); nothing evaluated"
        )
    done = ledger.times_charged(run.run_key, EVALUATION)
    if done >= plan.evaluation_releases:
        raise PrivacyBudgetExceeded(
            f"this run's {plan.evaluation_releases} DP evaluations (evaluation-releases) are spent; raise it "
            "before the run starts to evaluate more rows"
        )
    ledger.check(plan.evaluation_events(), what="this DP evaluation")


def handle_dp_evaluate(
    content: RecordDict, held_out: HeldOutUsers, rows: sp.csr_matrix, config: RunConfig, state: RecordDict,
    budget: NodeBudget, run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """Noisy metric sums over ``held_out``, charged to the node's ledger (the module docstring has the maths)."""
    ledger: PrivacyLedger | None = None
    try:
        request = EvaluationRequest.from_record(content)
        if request.planned_rounds is None:
            raise ProtocolError(f"evaluation request: field {wire.PLANNED_ROUNDS!r} is missing")
        plan = privacy_plan(state, config, rows.shape[0], request.planned_rounds, budget)
        evaluation_settings(request)  # distinct cut-offs: the sensitivity √(1 + m) counts each metric once
        ledger = open_ledger(budget, rows, plan, config)
        check_evaluation(ledger, plan, run)
    except (FedsynthError, KeyError, TypeError, ValueError) as exc:
        return refusal(str(exc), ledger)
    metrics = exact_metrics(request, held_out)
    label = request.label or ""
    done = ledger.times_charged(run.run_key, EVALUATION)  # the purpose names the release: a label sent twice
    rng = np.random.default_rng(release_seed(config, f"evaluation-{done}-{label}"))  # never reuses its noise
    numbers = noisy_numbers(metrics, plan.evaluation_noise if plan.private else 0.0, rng)
    ledger.record(plan.evaluation_events(), EVALUATION, run, round=0, label=label,
                  requested_epsilon=config.privacy().target_epsilon)  # fmt: skip
    spent = ledger.spent()  # composed once: the total and the evaluations' own part
    released = NoisySums.from_metrics(MetricRecord(dict[str, MetricValue](numbers)))
    own = ledger.spent_own_noise()
    return DPEvaluationReply(released, spent["total"], spent.get(EVALUATION, 0.0), own, plan.delta).to_record()


HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def tensors_without_copy(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Read-only tensors over the message's own bytes (``ArrayRecord.to_torch_state_dict`` copies each array).

    Flower's ``Array.numpy()`` runs ``np.load`` on the serialized ``.npy`` bytes, i.e. a second
    copy of every array; for EASE at 20,000 items that is 1.6 GB more per evaluating process.
    Here the ``.npy`` header is parsed and the array is ``np.frombuffer`` over the bytes after it
    (no pickles are read, as ``np.load(allow_pickle=False)``). Scoring only reads the weights.
    """
    tensors = {}
    for key, array in record.items():
        stream = io.BytesIO(array.data)  # shares the bytes (CPython copies only on write)
        version = np.lib.format.read_magic(stream)
        if version not in HEADER_READERS:  # format 3.0 (utf-8 field names) only: Flower's own loader
            tensors[key] = torch.from_numpy(array.numpy())
            continue
        shape, fortran_order, dtype = HEADER_READERS[version](stream)
        if dtype.hasobject:
            raise ValueError(f"array {key!r} of the evaluation request holds Python objects; refused.")
        count = int(np.prod(shape, dtype=np.int64))
        flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=stream.tell())
        with warnings.catch_warnings():  # torch warns that the array is read-only: it is, by design
            warnings.simplefilter("ignore", UserWarning)
            tensors[key] = torch.from_numpy(flat.reshape(shape, order="F" if fortran_order else "C"))
    return tensors
