"""Rewrite the configuration table in README.md from pipeline.settings (run after adding a setting)."""
from __future__ import annotations

from pathlib import Path

from pipeline.cli.config_cmd import markdown_table

START, END = "<!-- config-table:start -->", "<!-- config-table:end -->"


def main() -> None:
    readme = Path(__file__).resolve().parents[2] / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{markdown_table()}\n{END}{tail}")


if __name__ == "__main__":
    main()
