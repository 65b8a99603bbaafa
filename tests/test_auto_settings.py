"""Settings whose default (0) is chosen from public information: the synthetic users from the silos' size."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.settings import AUTO_SYNTHETIC_USERS
from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.releases.statistics import NoisyStatistics


@pytest.mark.parametrize("users,expected", [(650.0, 2000), (6300.4, 6300), (63000.0, 30000), (-5.0, 2000)])
def test_automatic_synthetic_users_follow_the_silos_users_within_the_range(users: float, expected: int) -> None:
    config = RunConfig.from_run_config({})
    assert config.synthetic_users == 0 and AUTO_SYNTHETIC_USERS == (2000, 30000)
    assert config.synthetic_users_for(users) == expected
    assert config.synthesis(users).num_users == expected


def test_a_given_number_of_synthetic_users_is_kept_whatever_the_silos() -> None:
    config = RunConfig.from_run_config({"synthetic-users": 120})
    assert config.synthetic_users_for(63000.0) == 120


def test_the_users_come_from_the_released_length_histogram_never_below_zero() -> None:
    statistics = NoisyStatistics(np.zeros(5), np.array([3.0, 4.5, -1.0]), 1.0)
    assert statistics.users() == pytest.approx(6.5)
    assert NoisyStatistics(np.zeros(5), np.array([-3.0, 1.0]), 1.0).users() == 0.0


def test_negative_synthetic_users_are_refused() -> None:
    with pytest.raises(ConfigError, match="synthetic-users"):
        RunConfig.from_run_config({"synthetic-users": -1})
