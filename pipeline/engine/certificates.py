"""Window certificates: a hash chain over every decision a router worker made, per MoE layer.

A router worker incarnation (``worker`` in the outcomes) numbers each layer's decisions with
its governor clock ``pos`` 0, 1, 2, ... For every ``window`` positions (the budget window) it
seals one :class:`Certificate` per layer holding:

* the worker incarnation, the layer and the chain index (0, 1, ... without gaps);
* the position range ``[first, end)``; positions of batches whose outcomes were never
  acknowledged (the batch failed after routing and was fetched and routed again) are listed in
  ``void`` and left out of the hash;
* the number of learned-router calls in the range, the layer's budget (share, window, cap) and
  the decisions per tier and per table key kind;
* the table-set versions used and the content digest of each (:func:`table_set_digest`);
* ``digest`` = SHA-256 over (previous certificate's digest, the canonical bytes of every
  decision of the range in position order, the certificate's header), and, with a secret key,
  ``mac`` = HMAC-SHA-256(key, digest).

Anyone holding the outcomes can rebuild each certificate with :func:`window_digest` and compare:
a dropped, duplicated, injected or altered outcome changes the digest or the count; a removed
certificate breaks the chain (index and ``prev``). Without the key anyone who rewrites the
outcomes could also rewrite the certificates; the HMAC makes that impossible.

The canonical bytes of a decision (:data:`DECISION_FIELDS`) are fixed-width little-endian:
position, stream (8-byte BLAKE2b of its name), seq, token, table version, tier, key kind,
router-call flag, top-k experts and gate weights (float32 -- a JSON round trip of a float32 is
exact). Everything is pure: no I/O, the caller publishes the records.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, dataclass, field, fields
from typing import Iterable, Sequence

import numpy as np
import orjson

from pipeline.errors import VARError

from .audit import router_calls
from .events import KEY_LABELS, TIER_LABELS, DecisionBatch, KeyKind, Tier
from .table import RoutingTable
from .table_codec import encode_table

CERTIFICATE_FORMAT = "var-certificate/1"
ZERO_DIGEST = "0" * 64


class CertificateError(VARError, ValueError):
    """A record that is not a valid certificate; ``str(err)`` is the reason."""


def stream_hashes(names: Sequence[str]) -> np.ndarray:
    """uint64 [len(names)]: the 8-byte BLAKE2b of each stream name (the canonical stream id)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(n.encode(), digest_size=8).digest(), "little")
                        for n in names), dtype=np.uint64, count=len(names))


def _decision_dtype(k: int) -> np.dtype:
    return np.dtype([("pos", "<i8"), ("stream", "<u8"), ("seq", "<i8"), ("token", "<i8"), ("version", "<i8"),
                     ("tier", "i1"), ("key", "i1"), ("call", "i1"), ("experts", "<i4", (k,)),
                     ("weights", "<f4", (k,))])


@dataclass(slots=True)
class DecisionColumns:
    """One layer's decisions in position order, the columns the certificate hash covers."""

    positions: np.ndarray  # int64 [n], increasing
    streams: np.ndarray  # uint64 [n], :func:`stream_hashes` of each decision's stream
    seqs: np.ndarray  # int64 [n]
    tokens: np.ndarray  # int64 [n]
    versions: np.ndarray  # int64 [n], table-set version
    tiers: np.ndarray  # int8 [n]
    keys: np.ndarray  # int8 [n], KeyKind
    calls: np.ndarray  # bool [n], the decision consumed a learned-router call (learned or audited)
    experts: np.ndarray  # int [n, k]
    weights: np.ndarray  # float32 [n, k]

    def __len__(self) -> int:
        return len(self.positions)

    def canonical(self) -> bytes:
        """The fixed-width bytes of every decision, in row order."""
        k = self.experts.shape[1] if self.experts.ndim == 2 else 0
        rec = np.zeros(len(self), dtype=_decision_dtype(k))
        rec["pos"], rec["stream"], rec["seq"], rec["token"] = self.positions, self.streams, self.seqs, self.tokens
        rec["version"], rec["tier"], rec["key"], rec["call"] = self.versions, self.tiers, self.keys, self.calls
        rec["experts"], rec["weights"] = self.experts, self.weights
        return rec.tobytes()

    def take(self, rows: np.ndarray) -> "DecisionColumns":
        return DecisionColumns(*(getattr(self, f.name)[rows] for f in fields(DecisionColumns)))


@dataclass(slots=True)
class Certificate:
    """One sealed range of one layer's decisions of one worker incarnation (see module doc)."""

    worker: str
    layer: int
    index: int
    first: int
    end: int
    decisions: int
    learned: int  # router calls in the range (learned decisions and audits)
    budget: float
    window: int
    cap: int
    tiers: dict[str, int]
    keys: dict[str, int]
    tables: dict[str, str]  # table-set version -> its content digest
    prev: str
    digest: str = ""
    void: list[list[int]] = field(default_factory=list)  # [[a, b), ...] positions left out
    final: bool = False  # sealed at a clean stop: nothing follows in this chain
    mac: str | None = None

    def header(self) -> bytes:
        """The header bytes hashed after the decisions (everything but digest and mac)."""
        fields = asdict(self)
        for name in ("digest", "mac"):
            fields.pop(name)
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    def to_record(self) -> bytes:
        return orjson.dumps({"format": CERTIFICATE_FORMAT, **asdict(self)})

    def expected_mac(self, key: bytes) -> str:
        return hmac.new(key, bytes.fromhex(self.digest), hashlib.sha256).hexdigest()


def window_digest(cert: Certificate, columns: DecisionColumns) -> str:
    """The digest ``cert`` must carry when ``columns`` are its range's decisions (position order)."""
    h = hashlib.sha256(bytes.fromhex(cert.prev))
    h.update(columns.canonical())
    h.update(cert.header())
    return h.hexdigest()


def decode_certificate(raw: bytes) -> Certificate:
    """Parse one certificate record; :class:`CertificateError` with a one-line reason otherwise."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CertificateError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or obj.pop("format", None) != CERTIFICATE_FORMAT:
        raise CertificateError(f"not a {CERTIFICATE_FORMAT} record")
    try:
        cert = Certificate(**obj)
    except TypeError as exc:
        raise CertificateError(f"bad certificate fields ({exc})") from None
    ints = (cert.layer, cert.index, cert.first, cert.end, cert.decisions, cert.learned, cert.window, cert.cap)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints) or not isinstance(cert.worker, str):
        raise CertificateError("certificate fields of the wrong type")
    if len(cert.prev) != 64 or len(cert.digest) != 64 or cert.end < cert.first:
        raise CertificateError("certificate digests or range malformed")
    return cert


class CertificateSealer:
    """Builds one layer's certificate chain for one worker incarnation, batch by batch.

    Feed every batch's decisions in position order with :meth:`add` (or :meth:`void` for a batch
    whose outcomes were not acknowledged); each call returns the certificates it completed --
    one per ``window`` positions. :meth:`seal` closes the open range early (an idle worker, a
    clean stop with ``final=True``).
    """

    def __init__(self, worker: str, layer: int, budget: float, window: int, cap: int,
                 key: bytes | None = None) -> None:
        self.worker, self.layer, self.key = worker, layer, key
        self.budget, self.window, self.cap = budget, window, cap
        self.index, self.prev = 0, ZERO_DIGEST
        self._open(0)

    def _open(self, first: int) -> None:
        self.first, self.end = first, first
        self._hash = hashlib.sha256(bytes.fromhex(self.prev))
        self._decisions = self._learned = 0
        self._tiers = np.zeros(len(Tier), np.int64)
        self._keys = np.zeros(len(KeyKind), np.int64)
        self._tables: dict[str, str] = {}
        self._void: list[list[int]] = []

    def add(self, columns: DecisionColumns, tables: dict[int, str]) -> list[Certificate]:
        """Append decisions at consecutive positions starting at ``self.end``; ``tables``: the
        digest of each table-set version they name."""
        return self._feed(columns, tables, voided=False)

    def void(self, columns: DecisionColumns) -> list[Certificate]:
        """Record positions whose outcomes were not acknowledged (left out of the hash)."""
        return self._feed(columns, {}, voided=True)

    def _feed(self, columns: DecisionColumns, tables: dict[int, str], voided: bool) -> list[Certificate]:
        if len(columns) and int(columns.positions[0]) != self.end:
            raise ValueError(f"layer {self.layer}: decisions start at {int(columns.positions[0])}, "
                             f"expected position {self.end}")
        sealed: list[Certificate] = []
        start = 0
        while start < len(columns):
            boundary = (self.end // self.window + 1) * self.window
            stop = min(len(columns), start + boundary - self.end)
            self._absorb(columns.take(np.arange(start, stop)), tables, voided)
            start = stop
            if self.end == boundary:
                sealed.append(self.seal())
        return sealed

    def _absorb(self, part: DecisionColumns, tables: dict[int, str], voided: bool) -> None:
        n = len(part)
        if voided:
            if self._void and self._void[-1][1] == self.end:
                self._void[-1][1] += n
            else:
                self._void.append([self.end, self.end + n])
        else:
            self._hash.update(part.canonical())
            self._decisions += n
            self._learned += int(part.calls.sum())
            self._tiers += np.bincount(part.tiers.astype(np.int64), minlength=len(Tier))
            self._keys += np.bincount(part.keys.astype(np.int64), minlength=len(KeyKind))
            for version in np.unique(part.versions).tolist():
                self._tables[str(version)] = tables.get(version, "")
        self.end += n

    def pending(self) -> int:
        """Positions fed since the last certificate."""
        return self.end - self.first

    def seal(self, final: bool = False) -> Certificate:
        """Close the open range (possibly empty) into a certificate and open the next one."""
        cert = Certificate(self.worker, self.layer, self.index, self.first, self.end, self._decisions,
                           self._learned, self.budget, self.window, self.cap,
                           {label: int(c) for label, c in zip(TIER_LABELS, self._tiers)},
                           {label: int(c) for label, c in zip(KEY_LABELS, self._keys)},
                           dict(sorted(self._tables.items(), key=lambda kv: int(kv[0]))), self.prev,
                           void=self._void, final=final)
        self._hash.update(cert.header())
        cert.digest = self._hash.hexdigest()
        if self.key is not None:
            cert.mac = cert.expected_mac(self.key)
        self.index, self.prev = self.index + 1, cert.digest
        self._open(self.end)
        return cert


def chain_breaks(certs: Iterable[Certificate]) -> list[str]:
    """One line per break in one chain's certificates (sorted by index): a missing index, a
    ``prev`` that is not the previous digest, or a range that does not continue the previous."""
    problems, last = [], None
    for cert in certs:
        if last is None:
            if cert.index != 0 or cert.prev != ZERO_DIGEST or cert.first != 0:
                problems.append(f"{cert.worker} layer {cert.layer}: chain does not start at certificate 0 "
                                f"(first held: #{cert.index})")
        elif cert.index != last.index + 1:
            problems.append(f"{cert.worker} layer {cert.layer}: certificate(s) #{last.index + 1}..#{cert.index - 1} "
                            "missing")
        elif cert.prev != last.digest or cert.first != last.end:
            problems.append(f"{cert.worker} layer {cert.layer}: certificate #{cert.index} does not continue #{last.index}")
        last = cert
    return problems


def table_set_digest(tables: Sequence[RoutingTable]) -> str:
    """SHA-256 (hex) of a table set's layers in order, over their canonical encoding."""
    h = hashlib.sha256()
    for table in tables:
        raw = encode_table(table)
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


def decision_calls(decisions: DecisionBatch) -> np.ndarray:
    """bool [n]: which decisions consumed a learned-router call (learned, or audited)."""
    return router_calls(decisions.tiers, decisions.audit_results())
