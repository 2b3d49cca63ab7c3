"""Force a captured routing back through the MoE language model and measure perplexity.

Every stream of the capture is run through the model of a checkpoint twice
(:func:`pipeline.model.evaluate.compare_routings`): once with the model's own (exact) routing,
once with the capture's experts AND gate weights forced at every MoE layer -- unlike Megatron's
``RouterReplay``, which replays the indices and recomputes the weights from the live gate. So a
capture of an exact run reproduces the exact perplexity, and any routing error shows up as a
perplexity change, KL and lower top-k set agreement with the exact gate.

Before running, :func:`check_replayable` refuses (``CaptureError``):

* streams that do not hold every seq from 0 (the model needs each token's whole context);
* layers, top_k, expert ids or token ids the model does not have;
* router ids other than the checkpoint's (``model_router_id(digest, layer)``): the capture was
  routed by other weights -- unless ``force`` (then they are only reported).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from pipeline.capture import Capture, CaptureError, stream_spans
from pipeline.engine.events import TIER_LABELS
from pipeline.model.checkpoint import Checkpoint
from pipeline.model.evaluate import compare_routings
from pipeline.model.router import model_router_id

VARIANT = "capture"


@dataclass
class LayerReplay:
    """One MoE layer: the capture's tier mix and its agreement with the exact gate."""

    layer: int
    router_ids: list[str]
    router_matches: bool
    tiers: dict[str, float]  # share of the capture's decisions per tier
    top1: float
    set_match: float
    recall: float


@dataclass
class CaptureReplay:
    """Perplexity of the captured routing next to the exact routing's, over ``tokens`` predictions."""

    checkpoint: str
    sha256: str
    streams: int
    tokens: int
    exact_perplexity: float
    perplexity: float
    perplexity_change_pct: float
    kl: float
    greedy_agreement: float
    forced_router_mismatch: bool
    layers: list[LayerReplay]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def mismatched_router_ids(capture: Capture, checkpoint: Checkpoint) -> list[str]:
    """Router ids of the capture that are not the checkpoint's id for their layer."""
    return [rid for layer, ids in zip(capture.layers, capture.layer_router_ids()) for rid in ids
            if rid != model_router_id(checkpoint.digest, layer)]


def check_replayable(capture: Capture, checkpoint: Checkpoint, force: bool = False) -> None:
    """Raise :class:`CaptureError` (one line) if ``capture`` cannot be replayed (module docstring)."""
    cfg = checkpoint.config
    broken = [s for s in stream_spans(capture) if not s.complete]
    if broken:
        first = broken[0]
        raise CaptureError(f"{len(broken)} stream(s) do not hold every seq from 0 (e.g. {first.name!r}: seqs "
                           f"{first.first_seq}..{first.last_seq}, {first.missing} missing); a replay needs whole "
                           "streams -- export without them (--streams) or re-export a complete source")
    if capture.layers != list(range(cfg.n_layer)) or capture.top_k != cfg.top_k:
        raise CaptureError(f"the capture has layers {capture.layers} and top_k {capture.top_k}; the model "
                           f"{checkpoint.path} has {cfg.n_layer} layers and top_k {cfg.top_k}")
    if len(capture) and (int(capture.experts.max()) >= cfg.n_experts or int(capture.tokens.max()) >= cfg.vocab_size):
        raise CaptureError(f"the capture names experts or tokens the model does not have "
                           f"({cfg.n_experts} experts, vocabulary {cfg.vocab_size})")
    wrong = mismatched_router_ids(capture, checkpoint)
    if wrong and not force:
        raise CaptureError(f"the capture was routed by {wrong[0]!r}, not by this checkpoint (sha256 "
                           f"{checkpoint.digest}); pass --force to replay it anyway")


def tier_shares(tiers: np.ndarray) -> dict[str, float]:
    """Share of each tier label in ``tiers`` (int8 [n])."""
    counts = np.bincount(tiers.astype(np.int64), minlength=len(TIER_LABELS))
    return {label: float(c) / max(1, len(tiers)) for label, c in zip(TIER_LABELS, counts.tolist())}


def replay_capture(capture: Capture, checkpoint: Checkpoint, force: bool = False,
                   progress: Callable[[int], None] | None = None) -> CaptureReplay:
    """Run ``capture`` through ``checkpoint``'s model (module docstring); ``progress(n)`` per batch."""
    check_replayable(capture, checkpoint, force)
    rows = capture.stream_rows()
    streams = [capture.tokens[r] for r in rows]  # flat layout = capture row order (sorted by stream, seq)
    routing = [(capture.experts[:, slot, :].astype(np.int64), capture.weights[:, slot, :])  # [T, K] each
               for slot in range(len(capture.layers))]
    quality = compare_routings(checkpoint.model, streams, {VARIANT: routing}, progress)
    variant = quality.variants[VARIANT]
    layers = [LayerReplay(layer, ids, all(i == model_router_id(checkpoint.digest, layer) for i in ids),
                          tier_shares(capture.tiers[:, slot]), agree.top1, agree.set_match, agree.recall)
              for slot, (layer, ids, agree) in enumerate(zip(capture.layers, capture.layer_router_ids(), variant.layers))]
    return CaptureReplay(checkpoint.path, checkpoint.digest, len(streams), quality.tokens, quality.exact_perplexity,
                         variant.perplexity, variant.perplexity_change_pct, variant.kl, variant.greedy_agreement,
                         bool(mismatched_router_ids(capture, checkpoint)), layers)
