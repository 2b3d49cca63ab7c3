"""Model checkpoints: safetensors weights plus the config and training record as metadata.

The content hash (:func:`content_digest`: SHA-256 of the config and the tensors, 12 hex digits) is part of every router id built on
a checkpoint, so caches and fast-path tables of different weights never mix.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.errors import VARError

from .moe import MoEConfig, MoELM

FORMAT = "var-moe-lm/1"
BUNDLED_CHECKPOINT = Path(__file__).resolve().parent / "data" / "moe-lm.safetensors"


class CheckpointError(VARError, ValueError):
    """A checkpoint that cannot be read; ``str(err)`` is a one-line reason."""


@dataclass
class Checkpoint:
    """A loaded model (eval mode), where it came from and what training recorded."""

    model: MoELM
    path: str
    digest: str  # content_digest of the weights
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> MoEConfig:
        return self.model.cfg


def content_digest(model: MoELM) -> str:
    """SHA-256 (first 12 hex digits) of the config and every tensor's name, dtype, shape and bytes.

    Not the file's hash: safetensors writes its metadata in no fixed order, so two saves of the
    same weights can differ byte for byte.
    """
    h = hashlib.sha256(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:12]


def save_checkpoint(model: MoELM, path: str | Path, record: dict[str, Any]) -> str:
    """Write ``model`` and ``record`` (JSON-able) to ``path``; returns the content digest."""
    state = {name: t.detach().contiguous().cpu() for name, t in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(model.cfg.to_dict()), "record": json.dumps(record)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return content_digest(model)


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
    return Checkpoint(model, str(p), content_digest(model), json.loads(meta.get("record", "{}")))

