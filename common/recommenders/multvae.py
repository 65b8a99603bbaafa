"""Mult-VAE as a central recommender: trained without DP on a user × item matrix.

Uses the model and loss of :mod:`fedsynth.common.models.vae` (the same module the federated
clients train under DP). With validation users, the epoch with the best validation
NDCG@100 is kept (as in Liang et al.); without, the last epoch is kept.
"""

from __future__ import annotations

import copy

import numpy as np
import scipy.sparse as sp
import torch

from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.split import HeldOutUsers
from fedsynth.common.models.optim import adam
from fedsynth.common.models.vae import MultVAE, MultVAEConfig, kl_beta, vae_loss
from fedsynth.common.recommenders.base import Recommender

_SELECTION_METRIC = "ndcg@100"


def csr_rows_to_tensor(rows: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """Dense float32 tensor (b, n_items) of a CSR batch; only a batch is ever densified."""
    return torch.from_numpy(np.asarray(rows.todense(), dtype=np.float32)).to(device)


class MultVAERecommender(Recommender):
    """Non-private Mult-VAE; ``score`` returns the decoder's logits for the fold-in's posterior mean."""

    name = "multvae"

    def __init__(self, config: MultVAEConfig | None = None, device: str = "cpu", eval_every: int = 5):
        self.config = config or MultVAEConfig()
        self.device = torch.device(device)
        self.eval_every = eval_every
        self.model: MultVAE | None = None
        self.history: list[dict[str, float]] = []

    @classmethod
    def from_model(cls, model: MultVAE, device: str = "cpu") -> MultVAERecommender:
        """A recommender from an already trained model (e.g. the federated DP Mult-VAE)."""
        recommender = cls(device=device)
        recommender.model = model.to(recommender.device)
        return recommender

    def fit(self, train: sp.csr_matrix, validation: HeldOutUsers | None = None) -> MultVAERecommender:
        config = self.config
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        model = MultVAE.from_config(train.shape[1], config).to(self.device)
        optimizer = adam(model.parameters(), config.learning_rate, config.weight_decay)
        self.model = model
        binary = (train > 0).astype(np.float32).tocsr()
        best_score, best_state = -np.inf, copy.deepcopy(model.state_dict())
        step = 0
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(binary.shape[0], generator=generator).numpy()
            total = 0.0
            for start in range(0, len(order), config.batch_size):
                x = csr_rows_to_tensor(binary[order[start : start + config.batch_size]], self.device)
                logits, mu, logvar = model(x)
                loss = vae_loss(logits, x, mu, logvar, kl_beta(step, config.anneal_steps, config.beta_cap))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                total += float(loss.detach()) * x.shape[0]
            record = {"epoch": float(epoch), "train_loss": total / binary.shape[0]}
            if validation is not None and (epoch % self.eval_every == 0 or epoch == config.epochs):
                from fedsynth.common.evaluation.scoring import evaluate

                score = evaluate(self, validation, EvalConfig(ks=(100,)))[_SELECTION_METRIC]
                record[f"validation_{_SELECTION_METRIC}"] = score
                if score > best_score:
                    best_score, best_state = score, copy.deepcopy(model.state_dict())
            self.history.append(record)
        if validation is not None:
            model.load_state_dict(best_state)
        return self

    @torch.no_grad()
    def score(self, fold_in: sp.csr_matrix) -> np.ndarray:
        assert self.model is not None, "call fit() first"
        self.model.eval()
        logits, _, _ = self.model(csr_rows_to_tensor(fold_in, self.device))
        return logits.cpu().numpy().astype(np.float64)
