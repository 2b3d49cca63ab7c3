"""``var model``: train the bundled MoE language model and inspect checkpoints."""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from .common import UserError, add_progress_flag, print_json, show_progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="the MoE language model VAR routes (train, inspect)")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    train = msub.add_parser("train", help="train the MoE LM (deterministic; ~10 min on 2 CPU cores)")
    train.add_argument("--out", default=None, help="checkpoint path (default: the bundled checkpoint's path)")
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1100)")
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    train.add_argument("--threads", type=int, default=2, help="torch threads; part of determinism (default 2)")
    train.add_argument("--dense", action="store_true", help="train the dense baseline of the same active size")
    add_progress_flag(train)
    train.set_defaults(handler=run_train)
    stats = msub.add_parser("stats", help="(re)compute a checkpoint's training-text routing statistics")
    stats.add_argument("checkpoint", nargs="?", default=None, help="default: the bundled checkpoint")
    add_progress_flag(stats)
    stats.set_defaults(handler=run_stats)
    info = msub.add_parser("info", help="print a checkpoint's config, content hash and training record")
    info.add_argument("checkpoint", nargs="?", default=None, help="default: the bundled checkpoint")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=run_info)


def run_train(args: argparse.Namespace) -> int:
    from pipeline.model.checkpoint import BUNDLED_CHECKPOINT, save_checkpoint
    from pipeline.model.moe import MoEConfig
    from pipeline.model.train import TrainConfig, train

    if (args.steps is not None and args.steps < 1) or args.threads < 1:
        raise UserError("--steps and --threads must be >= 1")
    cfg = TrainConfig(seed=args.seed, threads=args.threads, **({"steps": args.steps} if args.steps else {}))
    out = args.out or (BUNDLED_CHECKPOINT if not args.dense else BUNDLED_CHECKPOINT.with_name("dense-lm.safetensors"))
    with tqdm(total=cfg.steps, unit="step", file=sys.stderr, disable=not show_progress(args),
              desc="dense" if args.dense else "moe") as bar:
        def progress(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        model, record = train(MoEConfig(dense=args.dense), cfg, progress)
    digest = save_checkpoint(model, out, record)
    if not args.dense:
        _write_stats(out, show_progress(args))
    print(f"wrote {out} (sha256 {digest}): {record['params']:,} parameters ({record['active_params']:,} active), "
          f"{record['tokens_seen']:,} tokens in {record['train_s']:.0f} s, held-out perplexity "
          f"{record['held_out_perplexity']:.2f} on {record['held_out_tokens']:,} tokens")
    return 0


def _write_stats(path, progress: bool) -> None:
    from pipeline.model.checkpoint import load_checkpoint
    from pipeline.model.corpus_stats import compute_stats, save_stats, stats_path
    from pipeline.model.train import encode_works

    if progress:
        print("model: routing the training works exactly for the fast-path statistics", file=sys.stderr)
    ckpt = load_checkpoint(path)
    save_stats(compute_stats(ckpt, encode_works(ckpt.record["train_works"])), stats_path(path), ckpt.digest)
    print(f"wrote {stats_path(path)} (per-layer routing statistics of the training works)")


def run_stats(args: argparse.Namespace) -> int:
    from pipeline.model.checkpoint import BUNDLED_CHECKPOINT, CheckpointError

    try:
        _write_stats(args.checkpoint or BUNDLED_CHECKPOINT, show_progress(args))
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    return 0


def run_info(args: argparse.Namespace) -> int:
    from pipeline.model.checkpoint import CheckpointError, load_checkpoint

    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    data = {"path": ckpt.path, "sha256": ckpt.digest, "config": ckpt.config.to_dict(), "record": ckpt.record}
    if args.json:
        print_json(data)
        return 0
    print(f"checkpoint  {ckpt.path}\nsha256      {ckpt.digest}")
    for key, value in ckpt.config.to_dict().items():
        print(f"{key:<11} {value}")
    for key in ("params", "active_params", "tokens_seen", "train_s", "held_out_perplexity"):
        print(f"{key:<11} {ckpt.record.get(key)}")
    return 0
