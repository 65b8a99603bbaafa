"""Central recommenders behind one interface: ``fit(train)``, ``score(fold_in)``, ``recommend(fold_in, k)``."""

from __future__ import annotations

from common.recommenders.base import Recommender
from common.recommenders.ease import EASE
from common.recommenders.itemknn import ItemKNN
from common.recommenders.multvae import MultVAERecommender
from common.recommenders.popularity import MostPopular

__all__ = ["EASE", "ItemKNN", "MostPopular", "MultVAERecommender", "Recommender"]
