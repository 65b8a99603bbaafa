"""Central recommenders behind one interface: ``fit(train)``, ``score(fold_in)``, ``recommend(fold_in, k)``."""

from __future__ import annotations

from fedsynth.common.recommenders.base import Recommender
from fedsynth.common.recommenders.ease import EASE
from fedsynth.common.recommenders.itemknn import ItemKNN
from fedsynth.common.recommenders.multvae import MultVAERecommender
from fedsynth.common.recommenders.popularity import MostPopular

__all__ = ["EASE", "ItemKNN", "MostPopular", "MultVAERecommender", "Recommender"]
