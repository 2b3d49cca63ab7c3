"""The gates of a trained MoE LM as VAR learned routers, one per layer.

:class:`ModelRouter` is VAR's expensive tier for a real model: layer ``l``'s decision for a
token is the model's own computation up to that layer's gate, recomputed from the token's
receptive field (the last ``(l+1)(A-1)+1`` tokens, :meth:`.moe.MoELM.gate_logits`), batched for
all misses of a batch. It is exact and stateless -- nothing per stream but the token window --
at the price of recomputing the lower layers for each miss (see README, "cost of a learned
call").

:func:`exact_routing` routes whole streams the cheap way (one streamed pass, every layer at
once): the offline phase and the quality evaluation use it.
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from pipeline.engine.routers import RouterOutput, RouterSpec, read_out

from .checkpoint import Checkpoint
from .moe import MoELM
from .windows import window_batches

MAX_ROWS = 1024  # contexts per forward pass of a learned call (bounds its memory)


def model_router_id(digest: str, layer: int) -> str:
    """``model-<checkpoint sha256[:12]>-l<layer>``: caches and tables of other weights never match."""
    return f"model-{digest}-l{layer}"


class ModelRouter:
    """The gate of ``layer`` of a checkpoint behind VAR's :class:`~pipeline.engine.routers.Router`."""

    def __init__(self, checkpoint: Checkpoint, layer: int, device: str = "cpu") -> None:
        cfg = checkpoint.config
        if cfg.dense or not 0 <= layer < cfg.n_layer:
            raise ValueError(f"checkpoint {checkpoint.path} has no MoE layer {layer}")
        self.model: MoELM = checkpoint.model.to(device)
        self.device = torch.device(device)
        self.layer = layer
        self.spec = RouterSpec(kind="model", vocab_size=cfg.vocab_size, hidden=cfg.d_model,
                               num_experts=cfg.n_experts, top_k=cfg.top_k, window=cfg.receptive_field(layer))
        self._id = model_router_id(checkpoint.digest, layer)
        self.calls = 0
        self.routed = 0
        self.seconds = 0.0  # time spent in learned calls (the cost per token of this tier)

    @property
    def router_id(self) -> str:
        return self._id

    def logits(self, contexts: np.ndarray) -> np.ndarray:
        """Gate logits [n, E] for contexts [n, W] (W >= the receptive field; PAD = -1)."""
        parts = [self.model.gate_logits(torch.from_numpy(np.ascontiguousarray(contexts[i:i + MAX_ROWS]))
                                        .to(self.device), self.layer).float().cpu().numpy()
                 for i in range(0, len(contexts), MAX_ROWS)]
        return np.concatenate(parts) if parts else np.zeros((0, self.spec.num_experts), np.float32)

    def route(self, contexts: np.ndarray, with_logits: bool = False) -> RouterOutput:
        t0 = time.perf_counter()
        logits = self.logits(contexts)
        self.calls += 1
        self.routed += len(contexts)
        self.seconds += time.perf_counter() - t0
        out = read_out(logits, self.spec.top_k)
        if with_logits:
            out.logits = logits
        return out


def model_routers(checkpoint: Checkpoint, device: str = "cpu") -> list[ModelRouter]:
    return [ModelRouter(checkpoint, layer, device) for layer in range(checkpoint.config.n_layer)]


@torch.inference_mode()
def exact_gate_logits(model: MoELM, streams: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per layer, gate logits [N, E] of every token of ``streams`` in the flat layout."""
    total = int(sum(len(s) for s in streams))
    out = [np.zeros((total, model.cfg.n_experts), np.float32) for _ in range(model.cfg.n_layer)]
    for batch in window_batches(streams, model.cfg.context - 1):
        res = model(batch.tokens)
        idx = batch.flat[batch.outputs].numpy()
        for l, logits in enumerate(res.gate_logits):
            out[l][idx] = logits[batch.outputs].numpy()
    return out


def exact_routing(model: MoELM, streams: Sequence[np.ndarray]) -> list[RouterOutput]:
    """Per layer, the exact routing of every token of ``streams`` (flat layout)."""
    return [read_out(logits, model.cfg.top_k) for logits in exact_gate_logits(model, streams)]
