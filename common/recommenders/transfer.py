"""Recommenders as arrays, so a server can send a trained model to clients for federated evaluation.

``pack`` turns a fitted recommender into (kind, tensors, settings) that fit Flower's
ArrayRecord and ConfigRecord; ``unpack`` rebuilds an equivalent recommender that scores
exactly as the original. ``num_values`` is what crossing the wire would cost, so the
server can refuse models above a size limit (EASE's dense item × item matrix).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from fedsynth.common.models.vae import MultVAE
from fedsynth.common.recommenders.base import Recommender
from fedsynth.common.recommenders.dp_als import ALSRecommender
from fedsynth.common.recommenders.ease import EASE, SubsetEASE
from fedsynth.common.recommenders.itemknn import ItemKNN
from fedsynth.common.recommenders.multvae import MultVAERecommender
from fedsynth.common.recommenders.popularity import MostPopular

Settings = dict[str, int | float | str]


def pack(recommender: Recommender) -> tuple[str, dict[str, torch.Tensor], Settings]:
    """(kind, tensors, settings) of a fitted recommender."""
    if isinstance(recommender, MostPopular):
        assert recommender.counts is not None, "fit first"
        return "popularity", {"counts": torch.from_numpy(recommender.counts)}, {}
    if isinstance(recommender, ALSRecommender):
        tensors = {k: torch.from_numpy(np.asarray(getattr(recommender, k))) for k in ("items", "factors", "fallback")}
        return "als", tensors, {"l2": recommender.l2, "unobserved-weight": recommender.unobserved_weight}
    if isinstance(recommender, SubsetEASE):
        tensors = {k: torch.from_numpy(getattr(recommender, k)) for k in ("items", "weights", "fallback")}
        return "subset-ease", tensors, {}
    if isinstance(recommender, EASE):
        assert recommender.weights is not None, "fit first"
        return "ease", {"weights": torch.from_numpy(recommender.weights)}, {}
    if isinstance(recommender, ItemKNN):
        assert recommender.similarity is not None, "fit first"
        similarity = recommender.similarity.tocsc()
        tensors = {
            "data": torch.from_numpy(similarity.data.astype(np.float32)),
            "indices": torch.from_numpy(similarity.indices.astype(np.int64)),
            "indptr": torch.from_numpy(similarity.indptr.astype(np.int64)),
        }
        return "itemknn", tensors, {"num-items": similarity.shape[0]}
    if isinstance(recommender, MultVAERecommender):
        model = recommender.model
        assert model is not None, "fit first"
        hidden = [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)][:-1]
        settings: Settings = {
            "num-items": model.num_items,
            "latent": model.latent_dim,
            "hidden": ",".join(str(h) for h in hidden),
        }
        return "multvae", {k: v.detach().cpu() for k, v in model.state_dict().items()}, settings
    raise TypeError(f"no wire format for {type(recommender).__name__}")


def unpack(kind: str, tensors: dict[str, torch.Tensor], settings: Settings) -> Recommender:
    """The recommender :func:`pack` described."""
    if kind == "popularity":
        return MostPopular.from_counts(tensors["counts"].numpy())
    if kind == "ease":
        ease = EASE()
        ease.weights = tensors["weights"].numpy()
        return ease
    if kind == "subset-ease":
        return SubsetEASE(*(tensors[k].numpy() for k in ("items", "weights", "fallback")))
    if kind == "als":
        items, factors, fallback = (tensors[k].numpy() for k in ("items", "factors", "fallback"))
        return ALSRecommender(items, factors, fallback, float(settings["l2"]), float(settings["unobserved-weight"]))
    if kind == "itemknn":
        knn = ItemKNN()
        n = int(settings["num-items"])
        parts = (tensors["data"].numpy(), tensors["indices"].numpy(), tensors["indptr"].numpy())
        knn.similarity = sp.csc_matrix(parts, shape=(n, n))
        return knn
    if kind == "multvae":
        hidden = tuple(int(h) for h in str(settings["hidden"]).split(",") if h)
        model = MultVAE(int(settings["num-items"]), hidden, int(settings["latent"]))
        model.load_state_dict(tensors)
        return MultVAERecommender.from_model(model)
    raise ValueError(f"unknown recommender kind {kind!r}")


def num_values(tensors: dict[str, torch.Tensor]) -> int:
    """Numbers that would cross the wire."""
    return sum(int(t.numel()) for t in tensors.values())


def known_size(name: str, num_items: int) -> int | None:
    """:func:`num_values` of recommender ``name`` fitted over ``num_items`` items, where it is known before fitting.

    EASE sends its dense (M, M) B, MostPopular its (M,) counts; the others' sizes depend on the data
    (ItemKNN's kept neighbours, a model's layers): None.
    """
    return {"ease": num_items**2, "popularity": num_items}.get(name)
