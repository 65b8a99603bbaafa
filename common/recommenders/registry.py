"""The one list of central recommenders and the one place that builds them by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedsynth.common.errors import ConfigError
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.recommenders.base import Recommender
from fedsynth.common.recommenders.ease import EASE
from fedsynth.common.recommenders.itemknn import ItemKNN
from fedsynth.common.recommenders.multvae import MultVAERecommender
from fedsynth.common.recommenders.popularity import MostPopular

RECOMMENDER_NAMES = ("popularity", "itemknn", "ease", "multvae")
# What a run trains centrally unless told: the Mult-VAE only where asked (``--recommenders ...,multvae``).
# On the built-in data it took 80 of a default run's 160 s (a model per synthetic row), below EASE in 3 of
# the 4 synthetic rows.
DEFAULT_RECOMMENDERS = ("popularity", "itemknn", "ease")


@dataclass(frozen=True)
class RecommenderSettings:
    """What the recommenders are built with (EASE's λ, ItemKNN's neighbourhood, Mult-VAE's config, device)."""

    ease_l2: float = 300.0
    knn_neighbours: int = 100
    knn_shrink: float = 0.0
    vae: MultVAEConfig = field(default_factory=MultVAEConfig)
    device: str = "cpu"


def check_recommender_names(names: tuple[str, ...] | list[str], option: str = "--recommenders") -> None:
    """An error naming ``option`` unless ``names`` is a non-empty subset of :data:`RECOMMENDER_NAMES`."""
    if not names or any(n not in RECOMMENDER_NAMES for n in names):
        raise ConfigError(
            f"{option} {','.join(names)!r}: choose from {', '.join(RECOMMENDER_NAMES)} (comma-separated)."
        )


def build_recommender(name: str, settings: RecommenderSettings) -> Recommender:
    """A fresh, unfitted recommender called ``name``."""
    if name == "popularity":
        return MostPopular()
    if name == "itemknn":
        return ItemKNN(settings.knn_neighbours, settings.knn_shrink)
    if name == "ease":
        return EASE(settings.ease_l2)
    if name == "multvae":
        return MultVAERecommender(settings.vae, device=settings.device)
    check_recommender_names([name])
    raise AssertionError(name)
