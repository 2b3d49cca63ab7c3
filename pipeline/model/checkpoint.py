"""Model checkpoints: safetensors weights plus the config and training record as metadata.

The content hash (SHA-256 of the file, first 12 hex digits) is part of every router id built on
a checkpoint, so caches and fast-path tables of different weights never mix.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .moe import MoEConfig, MoELM

FORMAT = "var-moe-lm/1"
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent / "data" / "moe-lm.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; ``str(err)`` is a one-line reason."""


@dataclass
class Checkpoint:
    """A loaded model (eval mode), where it came from and what training recorded."""

    model: MoELM
    path: str
    digest: str  # first 12 hex digits of the file's SHA-256
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> MoEConfig:
        return self.model.cfg


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def save_checkpoint(model: MoELM, path: str | Path, record: dict[str, Any]) -> str:
    """Write ``model`` and ``record`` (JSON-able) to ``path``; returns the content digest."""
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict()), "record": json.dumps(record)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return file_digest(path)


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_checkpoint(path: str | Path | None = None) -> Checkpoint:
    """Load a checkpoint (default: the bundled one); :class:`CheckpointError` if unreadable."""
    p = Path(path) if path is not None else BUNDLED_CHECKPOINT
    if not p.is_file():
        raise CheckpointError(f"no such checkpoint: {p}")
    try:
        meta = _metadata(p)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{p}: not a VAR MoE checkpoint (format {meta.get('format')!r})")
        cfg = MoEConfig(**json.loads(meta["config"]))
        model = MoELM(cfg)
        model.load_state_dict(load_file(str(p)))
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{p}: unreadable checkpoint ({str(exc).splitlines()[0]})") from None
    model.eval()
    return Checkpoint(model, str(p), file_digest(p), json.loads(meta.get("record", "{}")))

