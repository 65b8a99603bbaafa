"""``fedsynth baseline``: the central recommenders trained on real training users, scored on real test users.

These are the non-private upper bounds the federated, synthetic-data pipeline is compared with.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.prepare import DataSettings, PreparedData, prepare
from fedsynth.common.evaluation.scoring import evaluate
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.recommenders import MultVAERecommender, Recommender
from fedsynth.common.recommenders.registry import (
    RECOMMENDER_NAMES,
    RecommenderSettings,
    check_recommender_names,
)
from fedsynth.common.recommenders.registry import (
    build_recommender as build_named,
)
from fedsynth.common.runtime.device import check_device_available
from fedsynth.common.runtime.files import to_plain, write_json_atomic


@dataclass(frozen=True)
class UpperBoundConfig:
    """Which recommenders to train and their settings."""

    recommenders: tuple[str, ...] = RECOMMENDER_NAMES
    ease_l2: float = 300.0
    knn_neighbours: int = 100
    knn_shrink: float = 0.0
    vae: MultVAEConfig = field(default_factory=MultVAEConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_recommender_names(self.recommenders)
        check_device_available(self.device)  # the baseline trains here: refuse a GPU torch cannot see


def build_recommender(name: str, config: UpperBoundConfig) -> Recommender:
    settings = RecommenderSettings(config.ease_l2, config.knn_neighbours, config.knn_shrink, config.vae, config.device)
    return build_named(name, settings)


def run_baseline(
    settings: DataSettings,
    config: UpperBoundConfig,
    prepared: PreparedData | None = None,
    on_result: Any = None,
) -> dict[str, Any]:
    """Train each recommender on the training users, evaluate on the test users.

    Mult-VAE picks its epoch on the validation users; nothing is tuned on test users.
    ``on_result(name, metrics, seconds)`` is called after each recommender (for progress).
    Returns the ``baseline.json`` payload: ``{"protocol": ..., "results": ..., "seconds": ...}``.
    """
    prepared = prepared or prepare(settings)
    split = prepared.split
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name in config.recommenders:
        start = time.perf_counter()
        recommender = build_recommender(name, config)
        if isinstance(recommender, MultVAERecommender):
            recommender.fit(split.train, split.validation)
        else:
            recommender.fit(split.train)
        results[name] = evaluate(recommender, split.test, config.eval)
        seconds[name] = time.perf_counter() - start
        if on_result is not None:
            on_result(name, results[name], seconds[name])
    protocol = prepared.protocol(settings)
    protocol["evaluation"] = {
        "users": "test users (strong generalization)",
        "ks": list(config.eval.ks),
        "recommenders": to_plain(asdict(config)),
    }
    return {"protocol": protocol, "results": results, "seconds": seconds}


def save_baseline(payload: dict[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/baseline.json`` atomically; returns its path."""
    path = out_dir / "baseline.json"
    write_json_atomic(path, payload)
    return path
