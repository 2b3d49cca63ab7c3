"""Validation of setting values for :mod:`pipeline.settings`: the checks a setting declares,
parsing a raw value (environment text or flag), secrets from ``<ENV>_FILE`` and the cross-field
rules of the security settings. Every failure is a one-line :class:`SettingsError`.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from pipeline.errors import VARError

Check = Callable[[Any], "str | None"]
KAFKA_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:]*:)[^/@]*@", re.IGNORECASE)


class SettingsError(VARError, ValueError):
    """A setting with an invalid value; ``str(err)`` is a one-line message."""


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low:g}"


def within(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be within [{low:g}, {high:g}]"


def router_choice(value: str) -> str | None:
    if value in ("context", "seed", "model") or (value.startswith("model:") and len(value) > 6):
        return None
    return "must be model, model:PATH, context or seed"


def readable_file(value: str) -> str | None:
    return None if os.access(value, os.R_OK) and Path(value).is_file() else "no such readable file"


def redact_url(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` URL in it replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: m.group("head") + "***@", text)


def secret_from_file(f: dataclasses.Field[Any], env: Mapping[str, str], source: str) -> tuple[str, str]:
    """(source, value) of a secret read from the file ``<ENV>_FILE`` names (trailing newline
    stripped), as the official container images do; setting both ``<ENV>`` and ``<ENV>_FILE``
    is an error. The message names the file, never its content."""
    name = f.metadata["env"] + "_FILE"
    if source != "default":
        raise SettingsError(f"invalid {name}: set {f.metadata['env']} or {name}, not both")
    try:
        value = Path(env[name]).read_text().rstrip("\r\n")
    except OSError as exc:
        raise SettingsError(f"invalid {name}={env[name]!r}: cannot read it ({exc.strerror})") from None
    if not value:
        raise SettingsError(f"invalid {name}={env[name]!r}: the file is empty")
    return name, value


def check_security(values: Mapping[str, Any]) -> None:
    """Cross-field rules of the security settings (one-line SettingsError)."""
    if values["kafka_security_protocol"].startswith("SASL_") and not (values["kafka_username"] and
                                                                         values["kafka_password"]):
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={values['kafka_security_protocol']} needs KAFKA_USERNAME "
                            "and KAFKA_PASSWORD (or KAFKA_PASSWORD_FILE)")
    for service in ("kafka", "redis"):
        if bool(values[f"{service}_cert_file"]) != bool(values[f"{service}_key_file"]):
            raise SettingsError(f"{service.upper()}_CERT_FILE and {service.upper()}_KEY_FILE go together")


def parse(kind: type, raw: Any) -> Any:
    """``raw`` as a value of ``kind`` (bool from 1/0, true/false, yes/no, on/off)."""
    if raw is None or isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    if kind is bool:
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(raw)
    return kind(raw)


def validated(f: dataclasses.Field[Any], kind: type, source: str, raw: Any) -> Any:
    """The value of setting ``f`` from ``raw`` (given by ``source``), parsed and checked."""
    shown = "<secret>" if f.metadata["secret"] else redact_url(repr(raw))
    try:
        value = parse(kind, raw)
    except (TypeError, ValueError):
        raise SettingsError(f"invalid {source}={shown}: expected {kind.__name__}") from None
    choices, check = f.metadata["choices"], f.metadata["check"]
    problem = None
    if choices and value not in choices:
        problem = f"must be one of {', '.join(choices)}"
    elif check is not None and value is not None:
        problem = check(value)
    if problem:
        raise SettingsError(f"invalid {source}={shown}: {problem}")
    return value
