"""One call from settings to a split dataset: load → preprocess → split."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fedsynth.common.config.sections import DataConfig, PreprocessConfig, SplitConfig
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.loaders import load_table
from fedsynth.common.data.preprocess import preprocess
from fedsynth.common.data.split import Split, split_users
from fedsynth.common.runtime.files import to_plain


@dataclass(frozen=True)
class DataSettings:
    """Everything that decides which users and items a job sees."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)

    def to_dict(self) -> dict[str, Any]:
        return {name: to_plain(asdict(getattr(self, name))) for name in ("data", "preprocess", "split")}


@dataclass(frozen=True)
class PreparedData:
    """Preprocessed interactions and their strong-generalization split."""

    interactions: Interactions
    split: Split

    def protocol(self, settings: DataSettings) -> dict[str, Any]:
        """Settings plus data and split summaries and the cleaning report: what a result was measured on."""
        return {
            "settings": settings.to_dict(),
            "data": self.interactions.summary(),
            "split": self.split.summary(),
            "cleaning": self.interactions.report.to_dict(),
        }


def prepare(settings: DataSettings) -> PreparedData:
    """Load, clean and split the data described by ``settings``."""
    interactions = preprocess(load_table(settings.data), settings.preprocess)
    return PreparedData(interactions, split_users(interactions, settings.split))
