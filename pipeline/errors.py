"""The one base class of every error a user can act on (the bottom layer: imports nothing).

``var`` catches :class:`VARError` once (``pipeline/cli/main.py``): it prints ``var: error: <one
line>`` on stderr and exits with status 2. ``str(error)`` is always that one line. Whatever more
there is to say (a broker's log tail, a tool's output) goes in :attr:`VARError.details`: the CLI
logs it and prints it only with ``--verbose``; tracebacks and pytest reports show it as a note.
"""
from __future__ import annotations


class VARError(Exception):
    """A failure the user can fix (a missing file, a bad record, an invalid setting, a service
    that will not start). ``message`` is one line; ``details`` (optional) is the rest."""

    def __init__(self, message: object = "", details: str | None = None) -> None:
        first, _, rest = str(message).strip().partition("\n")
        self.message = first.strip() or type(self).__name__
        extra = "\n".join(part for part in (rest.strip(), (details or "").strip()) if part)
        self.details: str | None = extra or None
        super().__init__(self.message)
        if self.details:
            self.add_note(self.details)

    def __str__(self) -> str:
        return self.message
