"""The README's promises: the two quick-start commands, CI runs the test one, the config table is current."""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.cli.config_cmd import markdown_table

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "Quick start needs a code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_exactly_two_commands_main_job_then_tests():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "replay" in commands[0]
    assert (ROOT / commands[0].split()[0]).exists() and (ROOT / commands[1].split()[0]).exists()


def test_ci_runs_the_readme_test_command():
    assert quick_start_commands()[1] in (ROOT / ".ci" / "run").read_text()


def test_configuration_table_matches_the_settings():
    table = README.split("<!-- config-table:start -->", 1)[1].split("<!-- config-table:end -->", 1)[0]
    assert table.strip() == markdown_table().strip(), "regenerate with: python deploy/tools/update_readme_config.py"
