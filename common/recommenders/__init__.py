"""Central recommenders behind one interface: ``fit(train)``, ``score(fold_in)``, ``recommend(fold_in, k)``.

Modules:

- ``base``: ``Recommender``, the interface every central recommender implements;
- ``popularity``: ``MostPopular``;
- ``itemknn``: ``ItemKNN``, item-based nearest neighbours with cosine similarity;
- ``ease``: ``EASE`` (Steck 2019), one M × M float32 buffer inverted in place, and the subset form DP-EASE uses;
- ``multvae``: the Mult-VAE as a central recommender, trained without DP, its epoch chosen on validation users;
- ``registry``: the one list of recommender names and the one place that builds them by name;
- ``transfer``: a fitted recommender packed as tensors + settings, for federated evaluation;
- ``dp_baselines``: the simple DP baselines fedsynth is compared with: DP popularity and DP-EASE;
- ``dp_baselines_secure``: the same baselines summed by SecAgg with distributed Skellam noise.
"""

from __future__ import annotations

from fedsynth.common.recommenders.base import Recommender
from fedsynth.common.recommenders.ease import EASE
from fedsynth.common.recommenders.itemknn import ItemKNN
from fedsynth.common.recommenders.multvae import MultVAERecommender
from fedsynth.common.recommenders.popularity import MostPopular

__all__ = ["EASE", "ItemKNN", "MostPopular", "MultVAERecommender", "Recommender"]
