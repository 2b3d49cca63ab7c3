"""Train the bundled MoE language model (``var model train``): deterministic, CPU-sized.

Data: the bundled Shakespeare works minus :data:`pipeline.corpus.works.HELD_OUT`, tokenized with
the bundled BPE. Batches are random windows of ``seq_len + 1`` tokens drawn from a seeded
generator; AdamW with linear warm-up and cosine decay. With the same seed, settings and thread
count the weights -- and so the checkpoint's content hash -- are identical.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from pipeline.corpus.realtext import load_tokenizer, read_text
from pipeline.corpus.works import HELD_OUT, training_works, work_path

from .moe import MoEConfig, MoELM
from .windows import window_batches


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1100
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    evaluate: bool = True  # held-out perplexity in the record (off: faster, e.g. in tests)


def encode_works(names: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each bundled work (one array per work)."""
    encodings = load_tokenizer().encode_batch([read_text(work_path(n)) for n in names])
    return [np.asarray(e.ids, dtype=np.int64) for e in encodings]


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def sample_batch(data: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = rng.integers(0, len(data) - cfg.seq_len - 1, cfg.batch_size)
    rows = np.stack([data[s:s + cfg.seq_len + 1] for s in starts])  # [B, T+1]
    x = torch.from_numpy(rows[:, :-1].copy())
    y = torch.from_numpy(rows[:, 1:].copy())
    return x, y


@torch.inference_mode()
def perplexity(model: MoELM, streams: Sequence[np.ndarray]) -> float:
    """Exact next-token perplexity over whole streams (chunked, see :mod:`.windows`)."""
    model.eval()
    total, count = 0.0, 0
    for batch in window_batches(streams, model.cfg.context - 1):
        logits = model(batch.tokens).logits  # [B, W, V]
        keep = batch.outputs & (batch.targets >= 0)
        nll = torch.nn.functional.cross_entropy(logits[keep], batch.targets[keep], reduction="sum")
        total, count = total + float(nll), count + int(keep.sum())
    return math.exp(total / max(1, count))


Progress = Callable[[int, float], None]


def train(model_cfg: MoEConfig, cfg: TrainConfig, progress: Progress | None = None) -> tuple[MoELM, dict]:
    """Train from scratch; returns the model (eval mode) and a JSON-able training record."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    works = training_works()
    data = np.concatenate(encode_works(works))
    model = MoELM(model_cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    t0, loss_ema = time.perf_counter(), 0.0
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        x, y = sample_batch(data, cfg, rng)
        out = model(x, y)
        assert out.loss is not None and out.aux_loss is not None
        loss = out.loss + model_cfg.aux_weight * out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        value = float(out.loss.detach())
        loss_ema = value if step == 0 else 0.98 * loss_ema + 0.02 * value
        if progress is not None:
            progress(step + 1, loss_ema)
    train_s = time.perf_counter() - t0
    model.eval()
    held_out = encode_works(HELD_OUT) if cfg.evaluate else []
    record = {
        "train": asdict(cfg), "train_works": works, "held_out_works": list(HELD_OUT),
        "train_tokens": int(len(data)), "tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "train_s": round(train_s, 1), "final_train_loss": round(loss_ema, 4),
        "held_out_tokens": int(sum(len(s) for s in held_out)),
        "held_out_perplexity": round(perplexity(model, held_out), 3) if cfg.evaluate else None,
        "params": model.num_params(), "active_params": model.num_params(active=True),
    }
    return model, record
