"""Kafka's own console producer and consumer, run from the broker's jars (:mod:`.kafka_jars`).

The console producer (``kafka.tools.ConsoleProducer``) is in the broker's core jar; Kafka 3.9 moved
the console consumer to the ``kafka-tools`` module (``org.apache.kafka.tools.consumer.ConsoleConsumer``),
which ``kafka/pom.xml`` includes, as the distribution's ``libs/`` does.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import StackError, require_tool
from .kafka_jars import RESOURCES, TOOL_JVM_FLAGS, default_lib_dir, ensure_jars

PRODUCER = "kafka.tools.ConsoleProducer"
CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
# What the consumer prints between fields, between headers, and for a null key or header value:
# ASCII control characters, which JSON values never hold unescaped.
FIELD_SEP, HEADER_SEP, NULL_LITERAL = "\x1f", "\x1e", "\x1a"


def tool_classpath(lib_dir: Path | str | None = None) -> str:
    """The classpath of the console tools: the broker's jars (``kafka/pom.xml`` includes
    ``kafka-tools``), fetched by :func:`~pipeline.stack.kafka_jars.ensure_jars` when missing."""
    lib = Path(lib_dir).resolve() if lib_dir else default_lib_dir()
    ensure_jars(lib)
    return str(lib / "*")


def run_tool(main_class: str, args: Iterable[str], stdin: bytes | None = None, timeout_s: float = 120.0,
             lib_dir: Path | str | None = None) -> bytes:
    """Run one of Kafka's command-line tools; its stdout. StackError if it fails or times out."""
    argv = [require_tool("java"), *TOOL_JVM_FLAGS,
            f"-Dlog4j.configuration={(RESOURCES / 'tools-log4j.properties').as_uri()}",
            "-cp", tool_classpath(lib_dir), main_class, *args]
    try:
        result = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{main_class} did not finish in {timeout_s:g} s",
                         (exc.stderr or b"").decode(errors="replace")[-4000:]) from None
    if result.returncode != 0:
        raise StackError(f"{main_class} failed (exit {result.returncode})",
                         result.stderr.decode(errors="replace")[-4000:])
    return result.stdout


def console_produce(bootstrap: str, topic: str, lines: Iterable[str], key_separator: str | None = "\t",
                    timeout_s: float = 120.0) -> None:
    """Write ``lines`` with ``kafka-console-producer``, one message per line, each acknowledged
    (``--sync``, acks=all). With ``key_separator`` a line is ``key<separator>value``
    (``parse.key=true``); with None it is the value alone. A line without the separator fails it."""
    args = ["--bootstrap-server", bootstrap, "--topic", topic, "--sync", "--request-required-acks", "all"]
    if key_separator is not None:
        args += ["--property", "parse.key=true", "--property", f"key.separator={key_separator}"]
    text = "".join(line + "\n" for line in lines)
    run_tool(PRODUCER, args, text.encode(), timeout_s)


@dataclass(frozen=True)
class ConsumedRecord:
    """One record as ``kafka-console-consumer`` printed it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes | None]

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON object: key, value and header values as UTF-8 text (invalid bytes
        replaced; a null key is null), with its partition and offset -- the form
        ``docs/schemas/deadletter.schema.json`` describes."""
        def text(b: bytes | None) -> str | None:
            return None if b is None else b.decode(errors="replace")
        return {"key": text(self.key), "value": self.value.decode(errors="replace"), "partition": self.partition,
                "offset": self.offset, "headers": {k: text(v) for k, v in self.headers.items()}}


def parse_consumer_line(line: bytes) -> ConsumedRecord:
    """One output line of :func:`console_consume` (``Partition:p``, ``Offset:o``, headers, key,
    value, separated by ``FIELD_SEP``); StackError for a line of another shape."""
    fields = line.split(FIELD_SEP.encode(), 4)
    if len(fields) != 5 or not fields[0].startswith(b"Partition:") or not fields[1].startswith(b"Offset:"):
        raise StackError(f"not a console consumer record: {line[:200]!r}")
    null = NULL_LITERAL.encode()
    headers: dict[str, bytes | None] = {}
    if fields[2] != b"NO_HEADERS":
        for item in fields[2].split(HEADER_SEP.encode()):
            name, sep, value = item.partition(b":")
            if not sep:
                raise StackError(f"a console consumer header without ':': {item[:200]!r}")
            headers[name.decode(errors="replace")] = None if value == null else value
    return ConsumedRecord(int(fields[0][len(b"Partition:"):]), int(fields[1][len(b"Offset:"):]),
                          None if fields[3] == null else fields[3], fields[4], headers)


def console_consume(bootstrap: str, topic: str, *, max_messages: int | None = None, timeout_ms: int | None = 5000,
                    from_beginning: bool = True, timeout_s: float = 120.0) -> list[ConsumedRecord]:
    """Read ``topic`` with ``kafka-console-consumer`` (its own throw-away group) until
    ``max_messages`` records were read or none came for ``timeout_ms``; every printed line parsed
    (a value that holds a newline cannot be read back). At least one limit must be given."""
    if max_messages is None and timeout_ms is None:
        raise ValueError("give max_messages or timeout_ms, or the console consumer never exits")
    args = ["--bootstrap-server", bootstrap, "--topic", topic, *(["--from-beginning"] if from_beginning else [])]
    args += ["--max-messages", str(max_messages)] if max_messages is not None else []
    args += ["--timeout-ms", str(timeout_ms)] if timeout_ms is not None else []
    for prop in ("print.partition=true", "print.offset=true", "print.headers=true", "print.key=true",
                 f"key.separator={FIELD_SEP}", f"headers.separator={HEADER_SEP}", f"null.literal={NULL_LITERAL}"):
        args += ["--property", prop]
    out = run_tool(CONSUMER, args, None, timeout_s)
    return [parse_consumer_line(line) for line in out.split(b"\n") if line]
