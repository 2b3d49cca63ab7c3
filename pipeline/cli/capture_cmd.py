"""``var capture``: export the routed experts of outcomes as arrays, replay them through the model."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .common import UserError, add_progress_flag, add_settings, print_json, settings_from, show_progress

MAX_STREAM_LINES = 20  # streams listed in the table (all of them in --json)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="routing capture (router replay): export routed experts, replay them")
    csub = p.add_subparsers(dest="capture_command", metavar="ACTION", required=True)
    export = csub.add_parser("export", help="write the routed experts of outcomes as [tokens, layers, top_k] arrays (.npz)")
    export.add_argument("source", metavar="SOURCE", help="outcome export file (JSON Lines) or kafka:TOPIC")
    export.add_argument("--out", required=True, help="capture file to write (.npz)")
    export.add_argument("--streams", default=None, help="comma-separated stream names (default: all)")
    export.add_argument("--json", action="store_true", help="print the report as JSON")
    add_progress_flag(export)
    add_settings(export, groups=("kafka",))
    export.set_defaults(handler=run_export)
    replay = csub.add_parser("replay", help="force a capture's routing through the MoE LM and report perplexity")
    replay.add_argument("capture", metavar="FILE", help="capture file written by 'var capture export'")
    replay.add_argument("--model", default=None, help="checkpoint (default: the bundled MoE LM)")
    replay.add_argument("--force", action="store_true", help="replay even if the router ids are not the checkpoint's")
    replay.add_argument("--json", action="store_true", help="print the report as JSON")
    add_progress_flag(replay)
    replay.set_defaults(handler=run_replay)


def _stream_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("--streams needs at least one stream name")
    return names


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def run_export(args: argparse.Namespace) -> int:
    from pipeline.capture import CaptureError, build_capture, save_capture, stream_spans
    from pipeline.capture_replay import tier_shares
    from pipeline.capture_source import load_outcomes

    streams = _stream_names(args.streams)
    try:
        outcomes = load_outcomes(args.source, settings_from(args))
        capture = build_capture(outcomes, streams, args.source)
        save_capture(capture, args.out)
    except CaptureError as exc:
        raise UserError(str(exc)) from None
    spans = stream_spans(capture)
    incomplete = [s for s in spans if not s.complete]
    report: dict[str, Any] = {
        "out": args.out, "bytes": Path(args.out).stat().st_size, "source": args.source, "outcome_rows": len(outcomes),
        "tokens": len(capture), "duplicates_dropped": capture.meta["duplicates_dropped"], "layers": capture.layers,
        "top_k": capture.top_k, "replayable": not incomplete, "incomplete_streams": len(incomplete),
        "streams": [{"name": s.name, "tokens": s.tokens, "first_seq": s.first_seq, "last_seq": s.last_seq,
                     "missing": s.missing, "complete": s.complete} for s in spans],
        "layer_tiers": [{"layer": layer, "router_ids": ids, "table_versions": sorted(set(
            capture.table_versions[:, slot].tolist())), "tiers": tier_shares(capture.tiers[:, slot])}
            for slot, (layer, ids) in enumerate(zip(capture.layers, capture.layer_router_ids()))]}
    if args.json:
        print_json(report)
    else:
        _print_export(report)
    if incomplete:
        first = incomplete[0]
        sys.stdout.flush()
        print(f"var: warning: {len(incomplete)} stream(s) do not hold every seq from 0 (e.g. {first.name!r}: "
              f"seqs {first.first_seq}..{first.last_seq}, {first.missing} missing): 'var capture replay' will refuse "
              "this capture -- it needs whole streams", file=sys.stderr)
    return 0


def _print_export(r: dict[str, Any]) -> None:
    print(f"capture  {r['out']}  ({r['bytes']:,} bytes): {r['tokens']:,} tokens x {len(r['layers'])} layers x "
          f"top-{r['top_k']}, {len(r['streams'])} streams")
    print(f"source   {r['source']}: {r['outcome_rows']:,} outcome rows, {r['duplicates_dropped']:,} duplicates dropped, "
          f"{r['incomplete_streams']} stream(s) with gaps -> {'replayable' if r['replayable'] else 'NOT replayable'}")
    print(f"\n{'stream':<24} {'tokens':>8} {'seqs':>15} {'missing':>8}")
    for s in r["streams"][:MAX_STREAM_LINES]:
        print(f"{s['name']:<24} {s['tokens']:>8,} {str(s['first_seq']) + '..' + str(s['last_seq']):>15} {s['missing']:>8,}")
    if len(r["streams"]) > MAX_STREAM_LINES:
        print(f"... {len(r['streams']) - MAX_STREAM_LINES} more (--json lists all)")
    tiers = list(r["layer_tiers"][0]["tiers"]) if r["layer_tiers"] else []
    print(f"\n{'layer':<6} {'router id':<26} {'tables':<10} " + " ".join(f"{t:>15}" for t in tiers))
    for layer in r["layer_tiers"]:
        versions = layer["table_versions"]
        span = f"v{versions[0]}" + (f"..v{versions[-1]}" if len(versions) > 1 else "")
        print(f"{layer['layer']:<6} {','.join(layer['router_ids']):<26} {span:<10} "
              + " ".join(f"{_pct(layer['tiers'][t]):>15}" for t in tiers))


def run_replay(args: argparse.Namespace) -> int:
    from pipeline.capture import CaptureError, load_capture
    from pipeline.capture_replay import replay_capture
    from pipeline.model.checkpoint import CheckpointError, load_checkpoint

    try:
        capture = load_capture(args.capture)
        checkpoint = load_checkpoint(args.model)
        with tqdm(total=len(capture), unit="tok", unit_scale=True, file=sys.stderr, disable=not show_progress(args),
                  desc="replay") as bar:
            result = replay_capture(capture, checkpoint, args.force, bar.update)
    except (CaptureError, CheckpointError) as exc:
        raise UserError(str(exc)) from None
    if result.forced_router_mismatch:
        print("var: warning: --force: the capture's router ids are not this checkpoint's; the perplexity is that "
              "of another model's routing", file=sys.stderr)
    if args.json:
        print_json({"capture": args.capture, **result.to_dict()})
        return 0
    print(f"replay of {args.capture}: {result.streams} streams, {result.tokens:,} predicted tokens, through "
          f"{result.checkpoint} (sha256 {result.sha256})\n")
    print(f"{'routing':<10} {'perplexity':>11} {'change':>9} {'KL nats':>9} {'greedy':>8}")
    print(f"{'exact':<10} {result.exact_perplexity:>11.4f} {'-':>9} {'-':>9} {'-':>8}")
    print(f"{'capture':<10} {result.perplexity:>11.4f} {result.perplexity_change_pct:>+8.3f}% {result.kl:>9.5f} "
          f"{_pct(result.greedy_agreement):>8}\n")
    tiers = list(result.layers[0].tiers) if result.layers else []
    print(f"{'layer':<6} {'router':<7} {'top-1':>7} {'top-k set':>10} {'recall':>7}  "
          + " ".join(f"{t:>15}" for t in tiers))
    for l in result.layers:
        print(f"{l.layer:<6} {'ok' if l.router_matches else 'OTHER':<7} {_pct(l.top1):>7} {_pct(l.set_match):>10} "
              f"{_pct(l.recall):>7}  " + " ".join(f"{_pct(l.tiers[t]):>15}" for t in tiers))
    return 0
