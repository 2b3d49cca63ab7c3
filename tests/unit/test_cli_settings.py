"""The commands' setting flags come from the settings' groups (pipeline/settings.py GROUPS), so no
two commands that run the same thing drift apart."""
from __future__ import annotations

import argparse

import pytest

from pipeline.cli.common import LAUNCHER_OWN, ROUTER_WORKER, STATS_WORKER, setting_names, settings_from
from pipeline.cli.main import build_parser, main
from pipeline.settings import GROUPS, cli_flag, setting_fields

FLAGGED = {f.name for f in setting_fields() if cli_flag(f)}


def _commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf subcommand by its words ("worker", "stats worker", ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {path: parser}
    found: dict[str, argparse.ArgumentParser] = {}
    for name, child in subs[0].choices.items():
        found.update(_commands(child, f"{path} {name}".strip()))
    return found


COMMANDS = _commands(build_parser())


def settings_of(command: str) -> set[str]:
    """The settings whose own flag ``var COMMAND`` accepts."""
    by_name = {f.name: f for f in setting_fields()}
    return {a.dest for a in COMMANDS[command]._actions
            if a.dest in by_name and cli_flag(by_name[a.dest]) in a.option_strings}


def flagged(*groups: str, without: tuple[str, ...] = ()) -> set[str]:
    return set(setting_names(groups, without=without)) & FLAGGED


def test_every_setting_declares_known_groups_and_no_group_is_named_like_a_setting() -> None:
    for f in setting_fields():
        assert f.metadata["groups"] and set(f.metadata["groups"]) <= set(GROUPS), f.name
    assert not set(GROUPS) & {f.name for f in setting_fields()}
    assert all(setting_names((group,)) for group in GROUPS), "a group without settings"


def test_every_setting_with_a_flag_is_in_a_subcommand_besides_config() -> None:
    used = set().union(*(settings_of(c) for c in COMMANDS if c != "config"))
    assert FLAGGED - used == set()
    assert settings_of("config") == FLAGGED


def test_stack_up_help_has_router_mode_and_the_partitions_setting(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["stack", "up", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--router-mode" in out and "--partitions PARTITIONS" in out
    # one meaning of --partitions: the setting (VAR_PARTITIONS), which the workers get
    args = build_parser().parse_args(["stack", "up", "--partitions", "8", "--router-mode", "learned"])
    settings = settings_from(args, env={})
    assert (settings.partitions, settings.router_mode) == (8, "learned")


@pytest.mark.parametrize("command", ["replay", "worker", "stack", "chaos"])
def test_commands_that_route_accept_every_routing_and_engine_setting(command: str) -> None:
    assert flagged("routing", "engine") - settings_of(command) == set()


def test_bench_engine_and_frontier_differ_only_where_they_set_a_setting_themselves() -> None:
    assert flagged("routing", "engine") - settings_of("bench engine") == {"hidden", "experts", "table_file"}
    assert flagged("engine") - settings_of("frontier") == {"budget"}  # swept by --budgets


def test_worker_commands_take_exactly_their_groups() -> None:
    assert settings_of("worker") == flagged(*ROUTER_WORKER)
    assert settings_of("stats worker") == flagged(*STATS_WORKER)


def test_stack_up_takes_the_settings_of_the_workers_it_starts_and_no_other() -> None:
    workers = settings_of("worker") | settings_of("stats worker")
    assert settings_of("stack") == workers - flagged(*LAUNCHER_OWN)
    assert {"kafka_bootstrap", "redis_url", "worker_name", "metrics_port"} & settings_of("stack") == set()


@pytest.mark.parametrize("worker", ["worker", "stats worker"])
def test_replay_via_kafka_takes_every_setting_of_the_workers_it_starts(worker: str) -> None:
    assert settings_of(worker) - settings_of("replay") == set()


def test_setting_names_by_group_name_and_exclusion() -> None:
    assert setting_names(("services",)) == ("kafka_bootstrap", "redis_url")
    assert setting_names(("redis",), without=("services", "security")) == ("namespace", "redis_timeout_s")
    assert setting_names(("routing",), ("train_fraction",), without=("hidden",))[-1] == "train_fraction"
    with pytest.raises(ValueError, match="unknown"):
        setting_names(("no_such_group",))
