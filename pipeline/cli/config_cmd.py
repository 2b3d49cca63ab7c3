"""``var config``: the resolved settings (env + flags), or the README table."""
from __future__ import annotations

import argparse
import dataclasses

from pipeline.settings import cli_flag, redact_url, secret_fields, setting_fields

from .common import add_settings, print_json, settings_from


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show the resolved settings (flags > env > defaults)")
    p.add_argument("--markdown", action="store_true", help="print the README configuration table")
    p.add_argument("--json", action="store_true", help="print the settings as JSON")
    add_settings(p, [f.name for f in setting_fields()])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table())
        return 0
    values = dataclasses.asdict(settings_from(args))
    for secret in secret_fields():
        if values.get(secret):
            values[secret] = "<set>"  # a secret is never printed
    values = {k: redact_url(v) if isinstance(v, str) else v for k, v in values.items()}
    if args.json:
        print_json(values)
    else:
        for f in setting_fields():
            print(f"{f.name:<24} {values[f.name]!s:<28} ({f.metadata['env']})")
    return 0


def markdown_table() -> str:
    """The README configuration table (one row per setting)."""
    rows = ["| setting | env var | flag | default | meaning |", "|---|---|---|---|---|"]
    for f in setting_fields():
        flag = cli_flag(f)
        rows.append(f"| {f.name} | `{f.metadata['env']}` | {f'`{flag}`' if flag else ''} | `{f.default}` "
                    f"| {f.metadata['help']} |")
    return "\n".join(rows)
