"""Synthesis (lengths only from the DP histogram, known item ids), fidelity measures, recommender transfer,
and federated evaluation equal to the central computation on the same users."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from flwr.app import RecordDict

from fedsynth.client.evaluation import handle_evaluate
from fedsynth.common.config.run import LocalTrainingConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.split import Split
from fedsynth.common.evaluation.fidelity import closest_record_distance, fidelity_report
from fedsynth.common.evaluation.scoring import evaluate
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.privacy.releases.statistics import LogNormalLengths
from fedsynth.common.recommenders import EASE, ItemKNN, MostPopular, MultVAERecommender, Recommender
from fedsynth.common.recommenders.transfer import pack, unpack
from fedsynth.common.synthesis.sampling import SynthesisConfig, synthesize
from fedsynth.server.evaluation import evaluation_request, merge_evaluations
from fedsynth.server.pipeline import write_synthetic


def one_length_sampler(num_items: int, length: int) -> LogNormalLengths:
    return LogNormalLengths(float(np.log(length)), 1e-9, num_items)


@pytest.mark.parametrize("synthesizer", ["gan", "vae"])
def test_synthetic_lengths_come_only_from_the_dp_histogram(synthesizer: str) -> None:
    bundle = ModelBundle.create(300, LocalTrainingConfig(), seed=0)

    matrix = synthesize(bundle, synthesizer, one_length_sampler(300, 7), SynthesisConfig(num_users=50), seed=1)

    assert matrix.shape == (50, 300)
    assert set(np.diff(matrix.indptr).tolist()) == {7}
    # The synthesizer's only inputs are the global models, the DP length sampler and settings: no real data.
    assert list(inspect.signature(synthesize).parameters) == ["bundle", "synthesizer", "lengths", "config", "seed"]


def test_synthetic_parquet_has_only_catalogue_item_ids(tmp_path: Path) -> None:
    bundle = ModelBundle.create(40, LocalTrainingConfig(), seed=0)
    catalogue = [f"movie-{i}" for i in range(40)]
    matrix = synthesize(bundle, "gan", one_length_sampler(40, 5), SynthesisConfig(num_users=20), seed=0)

    write_synthetic(tmp_path / "synthetic.parquet", matrix, catalogue)

    frame = pd.read_parquet(tmp_path / "synthetic.parquet")
    assert list(frame.columns) == ["user", "item"]
    assert set(frame["item"]) <= set(catalogue)
    assert len(frame) == 100 and not (tmp_path / "synthetic.parquet.tmp").exists()


def test_fidelity_flags_copies_and_not_independent_data(small_split: Split) -> None:
    train = small_split.train
    held_out = small_split.test.fold_in + small_split.test.target

    copied = fidelity_report(train, train[:100], held_out)
    assert copied["identical_share"] == 1.0 and copied["dcr_median_synthetic"] == 0.0

    rng = np.random.default_rng(0)
    noise = sp.csr_matrix((rng.random((100, train.shape[1])) < 0.05).astype(np.float32))
    independent = fidelity_report(train, noise, held_out)
    assert independent["identical_share"] == 0.0
    assert independent["dcr_median_synthetic"] > copied["dcr_median_synthetic"]
    assert independent["cooccurrence_correlation"] < copied["cooccurrence_correlation"]
    assert independent["popularity_jsd"] > copied["popularity_jsd"]


def test_closest_record_distance_is_jaccard() -> None:
    reference = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=np.float32))
    queries = sp.csr_matrix(np.array([[1, 1, 1, 0]], dtype=np.float32))
    # |{0,1,2} ∩ {0,1}| / |∪| = 2/3 → distance 1/3.
    assert closest_record_distance(queries, reference)[0] == pytest.approx(1 / 3)


def fitted(train: sp.csr_matrix) -> list[Recommender]:
    vae = MultVAERecommender(MultVAEConfig(hidden_dims=(16,), latent_dim=4, epochs=1))
    return [MostPopular().fit(train), EASE(50.0).fit(train), ItemKNN(10).fit(train), vae.fit(train)]


def test_packed_recommenders_score_exactly_as_the_originals(small_split: Split) -> None:
    fold_in = small_split.test.fold_in[:20]
    for recommender in fitted(small_split.train):
        kind, tensors, settings = pack(recommender)
        np.testing.assert_allclose(unpack(kind, tensors, settings).score(fold_in), recommender.score(fold_in))


def test_federated_evaluation_equals_the_central_computation(small_split: Split) -> None:
    test = small_split.test
    config = EvalConfig(ks=(10, 20))
    shards = np.array_split(np.random.default_rng(0).permutation(len(test)), 3)  # three clients' held-out users
    for recommender in fitted(small_split.train):
        content = evaluation_request(recommender, config)
        replies = [handle_evaluate(RecordDict(dict(content)), test.subset(np.sort(s))) for s in shards]

        federated = merge_evaluations(replies, config, test.fold_in.shape[1]).result()
        central = evaluate(recommender, test, config)

        assert federated.keys() == central.keys()
        for name, value in central.items():
            assert federated[name] == pytest.approx(value, abs=1e-12), (recommender.name, name)


def test_an_evaluation_request_is_read_without_copying_its_arrays() -> None:
    import torch
    from flwr.app import ArrayRecord

    from fedsynth.client.evaluation import tensors_without_copy

    record = ArrayRecord({"w": torch.randn(30, 20), "i": torch.arange(7), "s": torch.tensor(3.0)})
    views, copies = tensors_without_copy(record), record.to_torch_state_dict()
    for key, copy in copies.items():
        assert torch.equal(views[key], copy) and views[key].dtype == copy.dtype
    data = record["w"].data  # the serialized .npy bytes the message carries
    start = np.frombuffer(data, dtype=np.uint8).ctypes.data
    assert start < views["w"].data_ptr() < start + len(data)  # the tensor lies inside them: no copy
    assert copies["w"].data_ptr() not in range(start, start + len(data))


class EvaluatingGrid:
    """A Grid of ``nodes`` clients, each answering an evaluation request on its shard of the held-out users."""

    def __init__(self, held_out: object, nodes: int) -> None:
        from fedsynth.client.evaluation import handle_evaluate as answer

        self.answer, self.shards = answer, {n: held_out for n in range(1, nodes + 1)}
        self.unpulled: list[object] = []

    def get_node_ids(self) -> list[int]:
        return list(self.shards)

    def push_messages(self, messages: object) -> list[str]:
        from flwr.app import Message

        ids = []
        for message in messages:  # type: ignore[attr-defined]
            message.metadata.__dict__["_message_id"] = message.object_id
            ids.append(message.metadata.message_id)
            reply_content = self.answer(message.content, self.shards[message.metadata.dst_node_id])
            self.unpulled.append(Message(reply_content, reply_to=message))
        return ids

    def pull_messages(self, message_ids: object) -> list[object]:
        pulled, self.unpulled = self.unpulled, []
        return pulled


@pytest.mark.usefixtures("flower_task_identity")
def test_central_recommenders_are_fitted_one_at_a_time_and_each_is_dropped_after_its_evaluation(
    small_split: Split,
) -> None:
    import weakref

    from fedsynth.common.config.run import RunConfig
    from fedsynth.server.pipeline import Candidate, evaluate_all, fitted

    alive: weakref.WeakSet[Recommender] = weakref.WeakSet()

    def fit() -> Recommender:
        assert not alive, "the previous candidate is still held while the next one is fitted"
        recommender = MostPopular().fit(small_split.train)
        alive.add(recommender)
        return recommender

    candidates = [Candidate("a", fit), Candidate("b", fit), fitted("prior", MostPopular().fit(small_split.train))]
    grid = EvaluatingGrid(small_split.test, nodes=2)
    config = RunConfig.from_run_config({})
    results, evaluation, seconds = evaluate_all(
        grid, config, candidates, grid.get_node_ids(), small_split.train.shape[1]
    )
    assert set(results) == {"a", "b", "prior"} and results["a"] == results["prior"]
    assert evaluation["a"]["clients"] == 2 and seconds["central_training"] >= 0
    assert not alive


@pytest.mark.usefixtures("flower_task_identity")
def test_a_recommender_known_to_be_too_large_to_send_is_skipped_without_being_fitted(small_split: Split) -> None:
    from fedsynth.common.config.run import RunConfig
    from fedsynth.common.recommenders.transfer import known_size
    from fedsynth.server.pipeline import Candidate, evaluate_all

    def never(*_: object) -> Recommender:
        raise AssertionError("fitted although its evaluation request could never be sent")

    num_items = small_split.train.shape[1]
    config = RunConfig.from_run_config({"eval-max-values": num_items**2 - 1})
    candidates = [
        Candidate("synthetic/ease", never, size=known_size("ease", num_items)),
        Candidate("popularity", lambda: MostPopular().fit(small_split.train), size=known_size("popularity", num_items)),
    ]
    grid = EvaluatingGrid(small_split.test, nodes=2)
    results, evaluation, _ = evaluate_all(grid, config, candidates, grid.get_node_ids(), num_items)

    assert set(results) == {"popularity"}
    assert evaluation["skipped"] == {
        "synthetic/ease": f"{num_items**2:,} values, above eval-max-values {num_items**2 - 1:,}: not fitted"
    }
