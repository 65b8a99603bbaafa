"""Every setting declared once: RunConfig, the options, pyproject.toml's block and docs/settings.md follow it.

None of these tests starts Flower: commands are parsed (``make_context``) or refuse before they start.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from fedsynth.common.config.reference import TOML_HEADER, markdown_page, toml_block, toml_value
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import (
    DataConfig,
    GeneratedDataConfig,
    PartitionConfig,
    PreprocessConfig,
    SplitConfig,
)
from fedsynth.common.config.settings import SECTIONS, run_settings
from fedsynth.common.data.prepare import DataSettings, prepare
from fedsynth.common.errors import ConfigError
from fedsynth.simulations.cli import cli, main
from fedsynth.simulations.jobs import preflight, resolve_run_config
from fedsynth.simulations.options import data_options, given_settings, partition_options
from fedsynth.simulations.runner import format_run_config

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"run": ("run",), "train": ("train",), "sweep": ("sweep",), "deploy local": ("deploy", "local")}
SET_BY_THE_COMMAND = {"pipeline", "out-dir"}  # fedsynth run / train choose the pipeline; --out is out-dir

# The options of fedsynth run / train / sweep / deploy local before the settings were declared once
# (simulations/jobs.py, _RUN_OPTIONS, at commit 2283bee): each must still parse to the same key and value.
OLD_RUN_OPTIONS: list[tuple[str, type]] = [
    ("rounds", int), ("strategy", str), ("proximal-mu", float), ("server-learning-rate", float),
    ("epsilon", float), ("delta", float), ("dataset", str), ("data-path", str), ("gen-users", int),
    ("gen-items", int), ("partition", str), ("audit-fraction", float), ("vae-batch-size", int),
    ("gan-batch-size", int), ("local-epochs", int), ("discriminator-steps", int), ("statistics-share", float),
    ("evaluation", str), ("evaluation-share", float), ("evaluation-releases", int), ("marginal-items", int),
    ("cooccurrence-share", float), ("cooccurrence-min-signal", float), ("synthesizers", str),
    ("synthetic-users", int), ("synthesis-temperature", float), ("recommenders", str), ("seed", int),
    ("device", str), ("ledger-dir", str), ("min-clients", int), ("allow-degraded", bool),
    ("secure-aggregation", bool), ("secagg-threshold", int), ("secagg-bits", int), ("secagg-neighbours", int),
    ("round-mode", str), ("fedsgd-sample-rate", float), ("attack", str), ("attack-clients", int),
    ("attack-targets", int), ("attack-scale", float), ("attack-fake-users", float), ("robust-aggregation", str),
    ("robust-malicious", int),
]  # fmt: skip
SAMPLES: dict[type, tuple[list[str], Any]] = {int: (["7"], 7), float: (["0.25"], 0.25), str: (["x:y"], "x:y")}


def command(path: tuple[str, ...]) -> click.Command:
    group: Any = cli
    for name in path:
        group = group.commands[name]
    return group


def parsed(path: tuple[str, ...], args: list[str]) -> dict[str, Any]:
    """The settings options ``fedsynth <path> <args>`` would call its function with (nothing runs)."""
    params = command(path).make_context(" ".join(path), list(args)).params  # click consumes the list
    names = {s.flags[0].removeprefix("--").replace("-", "_") for s in run_settings() if s.flags}
    return {k: v for k, v in params.items() if k in names}


def pyproject_config() -> dict[str, Any]:
    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])


def test_run_config_has_exactly_the_declared_settings_and_defaults() -> None:
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    defaults = RunConfig()

    assert list(fields) == [s.field for s in run_settings()]
    for s in run_settings():
        assert s.name == s.field.replace("_", "-")
        assert getattr(defaults, s.field) == s.default and type(s.default) is s.kind, s.name
        assert s.help.endswith(".") and s.section, s.name


def test_every_section_starts_at_a_declared_setting_in_order() -> None:
    titles = [s.section for s in run_settings()]

    assert [title for title, _ in SECTIONS] == list(dict.fromkeys(titles))
    assert all(next(s for s in run_settings() if s.section == title).name == first for title, first in SECTIONS)


def test_pyproject_block_holds_every_setting_with_its_declared_default() -> None:
    """Flower's run config is this block: a key missing here is refused by ``flwr run --run-config``."""
    block = pyproject_config()
    declared = {s.name: s.default for s in run_settings()}

    assert sorted(set(declared) - set(block)) == [], "settings missing from [tool.flwr.app.config]"
    assert sorted(set(block) - set(declared)) == [], "keys in [tool.flwr.app.config] that are no setting"
    differing = [
        f"{key}: pyproject.toml has {toml_value(block[key])}, common/config/settings.py declares {toml_value(value)}"
        for key, value in declared.items()
        if block[key] != value or type(block[key]) is not type(value)
    ]
    assert differing == [], "; ".join(differing)


def test_pyproject_block_is_the_generated_one_comments_included() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    committed = text[text.index(TOML_HEADER + "\n") :]

    assert committed == toml_block(), "run `fedsynth settings --toml` and put its output in place of the block"


def test_docs_settings_page_is_current() -> None:
    committed = (ROOT / "docs" / "settings.md").read_text()

    assert committed == markdown_page(), "run `fedsynth settings --markdown > docs/settings.md`"


def test_the_settings_command_prints_the_block_and_the_page() -> None:
    toml = CliRunner().invoke(cli, ["settings", "--toml"])
    markdown = CliRunner().invoke(cli, ["settings", "--markdown"])

    assert toml.exit_code == 0 and toml.output == toml_block()
    assert markdown.exit_code == 0 and markdown.output == markdown_page()
    assert CliRunner().invoke(cli, ["settings"]).output == toml_block()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_setting_is_an_option_with_its_declared_help_and_default(name: str) -> None:
    params = command(COMMANDS[name]).params
    flags = {flag for p in params for flag in p.opts}
    helps = {flag: getattr(p, "help", "") or "" for p in params for flag in p.opts}

    unreachable = {s.name for s in run_settings() if not s.flags}
    assert unreachable == SET_BY_THE_COMMAND
    for s in run_settings():
        if s.flags:
            assert set(s.flags) <= flags, s.name
            assert helps[s.flags[0]].startswith(s.help), s.name
            assert s.default == "" or "[default: " in helps[s.flags[0]], s.name
    assert "[default: 0]" in helps["--rounds"] and "[default: vae,gan]" in helps["--synthesizers"]


@pytest.mark.parametrize(("option", "kind"), OLD_RUN_OPTIONS)
def test_every_old_run_option_still_parses_to_the_same_setting(option: str, kind: type) -> None:
    args, value = ([], True) if kind is bool else SAMPLES[kind]
    key = "num-server-rounds" if option == "rounds" else option

    for path in COMMANDS.values():
        assert given_settings(parsed(path, [f"--{option}", *args])) == {key: value}, path


def test_new_flag_names_and_switches_parse() -> None:
    params = parsed(("run",), ["--num-server-rounds", "4", "--no-simulation-reference", "--user-col", "uid"])

    assert given_settings(params) == {"num-server-rounds": 4, "simulation-reference": False, "user-col": "uid"}


def _data_command() -> click.Command:
    @click.command()
    @data_options
    @partition_options
    def probe(settings: DataSettings, partition: PartitionConfig, seed: int) -> tuple[Any, ...]:
        return settings, partition, seed

    return probe


def test_data_commands_keep_their_defaults() -> None:
    """fedsynth data / baseline: no audit users by default (a run reserves 0.1), 5 IID clients, seed 0."""
    settings, partition, seed = _data_command().main([], standalone_mode=False)

    assert settings == DataSettings(DataConfig(), PreprocessConfig(), SplitConfig(audit_fraction=0.0))
    assert partition == PartitionConfig(num_clients=5) and seed == 0


def test_every_old_data_option_builds_the_same_data_settings(tmp_path: Path) -> None:
    args = ["--dataset", "csv", "--data-path", "f.csv", "--cache-dir", "cache", "--mirror", "file:///m",
            "--user-col", "u", "--item-col", "i", "--rating-col", "r", "--time-col", "t", "--attribute-cols", "a, b",
            "--separator", "\\t", "--bad-rows", "skip", "--gen-users", "100", "--gen-items", "200",
            "--gen-mean-history", "30", "--gen-clusters", "4", "--implicit-threshold", "3.5",
            "--min-user-interactions", "2", "--min-item-interactions", "3", "--validation-fraction", "0.2",
            "--test-fraction", "0.15", "--fold-in-fraction", "0.7", "--audit-fraction", "0.05", "--seed", "7",
            "--clients", "3", "--partition", "dirichlet:0.5", "--num-clusters", "6"]  # fmt: skip

    settings, partition, seed = _data_command().main(args, standalone_mode=False)
    variant, _, _ = _data_command().main(["--dataset", "movielens", "--variant", "100k"], standalone_mode=False)

    generated = GeneratedDataConfig(num_users=100, num_items=200, mean_history=30.0, num_clusters=4, seed=7)
    data = DataConfig("csv", Path("f.csv"), None, Path("cache"), "file:///m", "u", "i", "r", "t", ("a", "b"), "\t",
                      "skip", generated)  # fmt: skip
    split = SplitConfig(validation_fraction=0.2, test_fraction=0.15, fold_in_fraction=0.7, audit_fraction=0.05, seed=7)
    assert settings == DataSettings(data, PreprocessConfig(3.5, 2, 3), split)
    assert partition == PartitionConfig(num_clients=3, scheme="dirichlet", alpha=0.5, num_clusters=6, seed=7)
    assert seed == 7 and variant.data.variant == "100k"


def _write_csv(path: Path, users: int = 300, items: int = 40) -> Path:
    """``users`` users with 8 distinct items each (ratings 4 or 5, all positives) and a region per user."""
    lines = ["uid;movie;stars;region"]
    for user in range(users):
        lines += [f"u{user};m{(user * 7 + 3 * k) % items};{4 + (user + k) % 2};{'north' if user % 2 else 'south'}"
                  for k in range(8)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fedsynth_run_reads_a_csv_export_with_its_columns(tmp_path: Path) -> None:
    """`fedsynth run --dataset csv --data-path X --user-col …` gets through option parsing, validation and the
    data preparation every simulated client does (preflight); Flower is not started."""
    path = _write_csv(tmp_path / "export.csv")
    args = ["--dataset", "csv", "--data-path", str(path), "--user-col", "uid", "--item-col", "movie",
            "--rating-col", "stars", "--separator", ";", "--attribute-cols", "region", "--partition", "natural:region",
            "--clients", "2", "--out", str(tmp_path / "run")]  # fmt: skip

    for path_ in COMMANDS.values():
        settings = resolve_run_config(None, parsed(path_, args), tmp_path / "run")

        assert preflight(settings, 2) == []
        prepared = prepare(RunConfig.from_run_config(settings).data())
        assert prepared.interactions.matrix.shape == (300, 40)
        assert set(settings) <= set(pyproject_config()), "Flower refuses run-config keys outside the block"
        assert "user-col='uid'" in format_run_config(settings) and "separator=';'" in format_run_config(settings)
    assert not (tmp_path / "run").exists()


def test_a_csv_run_without_its_columns_is_refused_naming_them(tmp_path: Path, capsys: Any) -> None:
    path = _write_csv(tmp_path / "export.csv")

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--dataset", "csv", "--data-path", str(path), "--out", str(tmp_path / "run")])

    assert exit_info.value.code == 2
    assert "--dataset csv needs --user-col and --item-col" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_options_are_refused_naming_each_option_and_value(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--rounds", "-1", "--fraction-train", "2", "--bad-rows", "drop", "--out", str(tmp_path / "r")])

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--rounds must be at least 0, got -1" in err and "--fraction-train must be in (0, 1], got 2.0" in err
    assert "--bad-rows must be one of error, skip, got 'drop'" in err
    assert not (tmp_path / "r").exists()


def test_bad_config_file_values_name_the_file_the_key_and_the_value(tmp_path: Path) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text('dataset = "sql"\nimplicit-threshold = "high"\n')
    typo = tmp_path / "typo.toml"
    typo.write_text("user_coll = 'uid'\n")

    with pytest.raises(ConfigError) as bad:
        resolve_run_config(config_file, {}, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"unknown key 'user_coll' in --config .*typo.toml; did you mean user-col"):
        resolve_run_config(typo, {}, tmp_path / "out")

    assert f"--config {config_file}: dataset must be one of generated, movielens, lastfm, csv, parquet" in str(
        bad.value
    )
    assert "implicit-threshold must be empty (the source's rule) or a number, got 'high'" in str(bad.value)


def test_flower_run_config_values_are_checked_by_key() -> None:
    with pytest.raises(ConfigError, match="secagg-bits must be 0 \\(automatic\\) or in \\[8, 64\\], got 4"):
        RunConfig.from_run_config({"secagg-bits": 4})
    with pytest.raises(ConfigError, match="synthesizers must be one or more of vae, gan, comma-separated"):
        RunConfig.from_run_config({"synthesizers": "vae,diffusion"})
    with pytest.raises(ConfigError, match="unknown key 'epsilom' in run config; did you mean epsilon"):
        RunConfig.from_run_config({"epsilom": 1.0})


def test_a_separator_typed_as_backslash_t_or_tab_is_a_tab() -> None:
    assert RunConfig(separator="\\t").data().data.separator == "\t"
    assert RunConfig(separator="tab").data().data.separator == "\t"
    assert RunConfig(separator="\t").data().data.separator == "\t"
    assert RunConfig(separator=";").data().data.separator == ";"
