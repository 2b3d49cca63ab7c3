"""The checks of ``var verify`` that recompute decisions: exactness and table consistency.

* **exactness**: every ``learned`` and ``cache`` decision is routed again by the router its
  ``router_id`` names -- rebuilt from the verifier's own settings; an id that is not one of
  those routers' ids (another checkpoint: model ids carry the checkpoint's SHA-256) fails --
  on the context rebuilt from the streams (:mod:`.streams`), in batches of
  :data:`ROUTE_ROWS`. Its context hash must equal the recorded ``ctx`` and its top-k expert
  set the recomputed one. A differing set whose k-th and (k+1)-th gate probabilities are
  closer than ``tie_tolerance`` is a *near tie*, reported on its own: floating-point sums
  depend on the batch shape (a row routed among 3 others or among 1000 takes different
  kernels), so a true tie can fall either way.
* **tables**: every ``fast``, ``budget_fallback`` and ``prior`` decision equals the route the
  table-set version it names gives its (previous token, token) -- same key kind, same experts,
  and for ``fast`` an eligible entry. Table sets come from the archive (:mod:`.sources`); their
  content digests must equal the ones the certificates state.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from pipeline.engine.certificates import Certificate, table_set_digest
from pipeline.engine.events import Tier
from pipeline.engine.hashing import context_hash
from pipeline.engine.routers import Router
from pipeline.engine.table import RoutingTable
from pipeline.outcomes import Outcomes

from .report import Check
from .streams import StreamIndex

ROUTE_ROWS = 65536  # contexts per router call of the exactness check
TableSource = Callable[[int], "list[RoutingTable] | None"]


def _sets(experts: np.ndarray) -> np.ndarray:
    return np.sort(experts, axis=1)


def _margins(logits: np.ndarray, k: int) -> np.ndarray:
    """float64 [n]: gap between the k-th and (k+1)-th softmax probability of each row."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    if p.shape[1] <= k:
        return np.full(len(p), np.inf)
    top = -np.sort(-p, axis=1)
    return top[:, k - 1] - top[:, k]


def check_exactness(outcomes: Outcomes, index: StreamIndex, routers: Sequence[Router],
                    tie_tolerance: float, progress: Callable[[int], None] | None = None) -> Check:
    check = Check("exactness")
    ids = index.ids(outcomes.streams)
    for li, layer in enumerate(outcomes.layers):
        rows = np.flatnonzero((layer.tiers == Tier.LEARNED) | (layer.tiers == Tier.CACHE))
        if li >= len(routers):
            check.violate(f"layer {li}: the verifier has no router for it ({len(routers)} layer(s))", len(rows))
            continue
        router = routers[li]
        foreign = np.asarray([layer.router_ids[r] != router.router_id for r in rows.tolist()], bool)
        if foreign.any():
            other = layer.router_ids[int(rows[foreign][0])]
            check.violate(f"layer {li}: {int(foreign.sum()):,} decision(s) name router {other}, the verifier runs "
                          f"{router.router_id}", int(foreign.sum()))
        rows = rows[~foreign]
        for a in range(0, len(rows), ROUTE_ROWS):
            _exact_batch(check, outcomes, li, rows[a:a + ROUTE_ROWS], ids, index, router, tie_tolerance)
            if progress is not None:
                progress(min(ROUTE_ROWS, len(rows) - a))
    return check


def _exact_batch(check: Check, outcomes: Outcomes, li: int, rows: np.ndarray, ids: np.ndarray, index: StreamIndex,
                 router: Router, tie_tolerance: float) -> None:
    layer = outcomes.layers[li]
    contexts, known = index.contexts(ids[rows], outcomes.seqs[rows], router.spec.window)
    check.add("unknown_context", int((~known).sum()))
    rows, contexts = rows[known], contexts[known]
    hashes = context_hash(contexts[:, :-1])
    wrong_ctx = hashes != layer.ctx[rows]
    for r in rows[wrong_ctx][:3].tolist():
        check.violate(f"layer {li}: {outcomes.streams[r]!r} seq {int(outcomes.seqs[r])}: recorded context hash "
                      "differs from the stream's context")
    check.violation_count += max(0, int(wrong_ctx.sum()) - 3)
    rows, contexts = rows[~wrong_ctx], contexts[~wrong_ctx]
    if len(rows) == 0:
        return
    out = router.route(contexts, with_logits=True)
    differ = (_sets(out.experts) != _sets(layer.experts[rows])).any(axis=1)
    assert out.logits is not None
    tie = differ & (_margins(out.logits, out.experts.shape[1]) < tie_tolerance)
    check.add("rerouted", len(rows))
    check.add("near_ties", int(tie.sum()))
    bad = differ & ~tie
    for r, want in zip(rows[bad][:3].tolist(), out.experts[bad][:3].tolist()):
        check.violate(f"layer {li}: {outcomes.streams[r]!r} seq {int(outcomes.seqs[r])} "
                      f"({'learned' if layer.tiers[r] == Tier.LEARNED else 'cache'}): experts "
                      f"{layer.experts[r].tolist()}, the router gives {want}")
    check.violation_count += max(0, int(bad.sum()) - 3)


def check_tables(outcomes: Outcomes, index: StreamIndex, tables: TableSource,
                 certs: Mapping[tuple[str, int], list[Certificate]]) -> Check:
    """``tables(version)``: the archived set, None when it is not retrievable."""
    check = Check("tables")
    window, known = index.contexts(index.ids(outcomes.streams), outcomes.seqs, 2)
    prevs = window[:, 0]
    check.add("unknown_context", int((~known).sum()))
    served = [np.flatnonzero(np.isin(layer.tiers, (Tier.FAST, Tier.BUDGET_FALLBACK, Tier.PRIOR)) & known)
              for layer in outcomes.layers]
    versions = sorted({int(v) for layer, rows in zip(outcomes.layers, served) for v in layer.table_versions[rows]})
    stated = {(int(v), d) for held in certs.values() for c in held for v, d in c.tables.items() if d}
    for version in versions:
        got = tables(version)
        if got is None:
            n = sum(int((layer.table_versions[rows] == version).sum()) for layer, rows in zip(outcomes.layers, served))
            check.violate(f"table set v{version} is not retrievable ({n:,} decisions name it)", n)
            continue
        digest = table_set_digest(got)
        claims = {d for v, d in stated if v == version}
        if claims - {digest}:
            check.violate(f"table set v{version}: the archived set's digest {digest[:12]} is not the one the "
                          f"workers certified ({', '.join(sorted(c[:12] for c in claims))})")
        check.add("table_sets")
        for li, (layer, rows) in enumerate(zip(outcomes.layers, served)):
            mine = rows[layer.table_versions[rows] == version]
            if len(mine) and li < len(got):
                _table_batch(check, outcomes, prevs, li, mine, got[li], version)
    return check


def _table_batch(check: Check, outcomes: Outcomes, prevs: np.ndarray, li: int, rows: np.ndarray,
                 table: RoutingTable, version: int) -> None:
    layer = outcomes.layers[li]
    tokens = outcomes.tokens[rows]
    lookup = table.resolve(prevs[rows], tokens)
    experts = table.routes(lookup, np.arange(len(rows)), tokens)[0]
    tiers = layer.tiers[rows]
    bad = ((_sets(experts) != _sets(layer.experts[rows])).any(axis=1) | (lookup.kind != layer.key_kinds[rows])
           | ((tiers == Tier.FAST) & ~lookup.eligible))
    check.add("checked", len(rows))
    for r, want in zip(rows[bad][:3].tolist(), experts[bad][:3].tolist()):
        check.violate(f"layer {li}: {outcomes.streams[r]!r} seq {int(outcomes.seqs[r])} ({Tier(layer.tiers[r]).label}, "
                      f"table v{version}): experts {layer.experts[r].tolist()}, the table gives {want}")
    check.violation_count += max(0, int(bad.sum()) - 3)
