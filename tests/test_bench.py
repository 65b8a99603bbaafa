"""The utility benchmarks' own logic: the in-process federation and the goals table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedsynth.common.config.run import RunConfig
from fedsynth.simulations.bench.levers import federate, parse_settings
from fedsynth.simulations.bench.utility import goals_table, is_fedsynth_row
from fedsynth.simulations.jobs import resolve_run_config


def test_in_process_federation_scores_every_row_on_validation_users() -> None:
    # a short marginal fit (20 steps at M = 50, not 300 at 300): its own tests are in test_marginals.py
    config = RunConfig.from_run_config(
        {"epsilon": 4.0, "gen-users": 300, "gen-items": 300, "vae-batch-size": 16, "gan-batch-size": 16,
         "synthetic-users": 100, "num-server-rounds": 2, "dp-ease-items": 100, "marginal-items": 50,
         "marginal-fit-steps": 20}
    )  # fmt: skip

    scores = federate(config, seed=0, num_clients=2)

    expected = {"synthetic/ease", "synthetic-gan/ease", "fedvae", "popularity", "real/ease", "dp-popularity", "dp-ease",
                "dp-als"}  # fmt: skip
    assert set(scores) == expected
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert scores["real/ease"] > 0.1  # the generated data has structure a real-data EASE finds


@pytest.mark.parametrize("secure", [False, True])
def test_the_marginals_bench_scores_every_stage_under_either_aggregation(secure: bool) -> None:
    from fedsynth.simulations.bench.marginals import score

    config = RunConfig.from_run_config(
        {"epsilon": 4.0, "gen-users": 300, "gen-items": 300, "vae-batch-size": 16, "gan-batch-size": 16,
         "synthetic-users": 100, "num-server-rounds": 1, "dp-ease-items": 100, "marginal-items": 50,
         "marginal-fit-steps": 20, "secure-aggregation": secure}
    )  # fmt: skip

    scores = score(config, seed=0, num_clients=2, held_out_name="validation")

    stages = {"synthetic-fitted-gan/ease", "synthetic-fitted-vae/ease", "synthetic/ease", "synthetic-gan/ease"}
    assert stages | {"fedsynth-prior", "dp-popularity", "dp-ease", "real/ease", "pairs-corr"} <= set(scores)
    assert all(0.0 <= scores[row] <= 1.0 for row in stages)
    synthetic = max(v for k, v in scores.items() if k.startswith("synthetic"))  # the popularity rows included
    assert {"synthetic-fitted-vae/popularity", "synthetic/popularity"} <= set(scores)
    assert scores["best-synthetic"] == synthetic
    assert scores["gap"] == pytest.approx(synthetic - max(scores["dp-popularity"], scores["dp-ease"]))


def test_parse_settings_makes_every_combination() -> None:
    assert parse_settings(["a=1,2", "b=x"]) == [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]
    assert parse_settings([]) == [{}]


def _summary(values: dict[tuple[float, str], float]) -> pd.DataFrame:
    rows = [
        {"epsilon_requested": e, "row": r, "metric": "ndcg@10", "mean": v, "ci95_low": v - 0.01, "ci95_high": v + 0.01}
        for (e, r), v in values.items()
    ]
    return pd.DataFrame(rows)


def test_goals_table_compares_the_best_fedsynth_row_with_the_best_baseline() -> None:
    summary = _summary(
        {
            (1.0, "synthetic/ease"): 0.05,
            (1.0, "fedvae"): 0.08,
            (1.0, "dp-popularity"): 0.10,
            (1.0, "dp-ease"): 0.04,
            (1.0, "real/ease"): 0.30,
            (8.0, "synthetic/ease"): 0.20,
            (8.0, "synthetic-gan/ease"): 0.25,
            (8.0, "dp-popularity"): 0.15,
            (8.0, "dp-ease"): 0.22,
            (8.0, "real/ease"): 0.30,
            (8.0, "popularity"): 0.9,  # non-private: never a fedsynth row nor a DP baseline
        }
    )

    table = goals_table(summary, "movielens").set_index("epsilon")

    assert table.loc[1.0, "best fedsynth row"] == "fedvae" and table.loc[1.0, "best baseline"] == "dp-popularity"
    assert not table.loc[1.0, "fedsynth beats baseline"]
    assert table.loc[8.0, "best fedsynth row"] == "synthetic-gan/ease" and table.loc[8.0, "fedsynth beats baseline"]
    assert table.loc[8.0, "retention ease"] == pytest.approx(0.20 / 0.30)
    assert is_fedsynth_row("fedsynth-prior") and not is_fedsynth_row("real/ease") and not is_fedsynth_row("dp-ease")


def test_the_large_silos_preset_runs_the_rounds_without_the_gan(tmp_path: Path) -> None:
    preset = Path(__file__).resolve().parents[1] / "presets" / "large-silos.toml"

    settings = resolve_run_config(preset, {}, tmp_path)

    config = RunConfig.from_run_config(settings)
    assert config.synthesizer_names() == ["vae"] and not config.local().train_gan
    assert config.vae_learning_rate == 0.001 and config.local_epochs == 1  # refining the fitted start
    assert config.num_server_rounds == 3 and config.vae_batch_size == 700
    assert config.marginal_fit_steps == 0 and config.synthetic_users == 0  # the synthesis adapts by default


@pytest.mark.parametrize(("preset", "items"), [("ml20m-shape.toml", 20_000), ("ml32m-shape.toml", 27_000)])
def test_the_size_presets_leave_room_to_evaluate_ease_at_their_catalogue(
    tmp_path: Path, preset: str, items: int
) -> None:
    settings = resolve_run_config(Path(__file__).resolve().parents[1] / "presets" / preset, {}, tmp_path)

    config = RunConfig.from_run_config(settings)
    assert config.gen_items == items and config.eval_max_values >= items**2


def test_min_item_interactions_reaches_the_preprocessing() -> None:
    config = RunConfig.from_run_config({"min-item-interactions": 10})

    assert config.data().preprocess.min_item_interactions == 10


def test_the_large_run_bench_names_processes_and_reads_their_memory() -> None:
    import os

    from fedsynth.simulations.bench.large import memory_of, role_of

    assert role_of(["/v/bin/python", "/v/bin/flower-superlink", "--insecure"]) == "flower-superlink"
    assert role_of(["ray::ClientAppActor.run"]) == "ray::ClientAppActor"  # an actor's task is the actor
    assert role_of(["/usr/bin/raylet", "--x"]) == "ray raylet"
    assert role_of(["/usr/bin/sleep", "1"]) == "sleep" and role_of([]) is None
    if not Path("/proc/self/smaps_rollup").exists():
        pytest.skip("no /proc/PID/smaps_rollup here")
    memory = memory_of(os.getpid())
    assert memory is not None and memory[0] >= memory[1] > 0  # RSS ≥ PSS > 0


def test_the_first_run_bench_reads_the_stages_a_finished_run_timed(tmp_path: Path) -> None:
    from fedsynth.simulations.bench.first_run import stage_seconds

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "flwr-run.log").write_text(
        "INFO : fedsynth marginal fit: generator and VAE decoder fitted (gan loss 2 -> 1, vae loss 2 -> 1; 5.5 s)\n"
    )
    (tmp_path / "train.json").write_text(json.dumps({"rounds": [{"seconds": 1.5}, {"seconds": 2.0}]}))
    (tmp_path / "metrics.json").write_text(json.dumps({"seconds": {"synthesis": 1.0, "central_training": 2.5}}))

    assert stage_seconds(tmp_path) == {
        "marginal fit": 5.5, "rounds": 3.5, "synthesis": 1.0, "central training": 2.5
    }  # fmt: skip
