"""Redis commands of many fixed-width arguments, serialised in one numpy pass.

redis-py packs a command argument by argument in Python (encode, length, join: about 0.2 µs per
argument; redis/redis-py#372 and #374 are the long-standing threads on that cost), which for a
batch's MGET of ~1,000 decision keys is most of the fetch. The decision keys of one layer share
a prefix and a fixed-width hex suffix, so their RESP form (``$<len>\\r\\n<key>\\r\\n`` each) is one
[n, width] byte matrix. :func:`mget_command` (the batch's fetch) and :func:`evalsha_command` (its
write) build the whole command that way; the store sends it on a redis-py connection (``send_packed_command``) and redis-py's parser reads the reply, so
TLS, authentication and error handling stay redis-py's.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

_CRLF = np.frombuffer(b"\r\n", np.uint8)


def bulk(item: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(item), item)


def bulk_rows(prefix: bytes, suffixes: np.ndarray) -> bytes:
    """The bulk strings ``prefix + row`` of every row of ``suffixes`` (uint8 [n, width]), back to back."""
    n, width = suffixes.shape
    head = np.frombuffer(b"$%d\r\n" % (len(prefix) + width) + prefix, np.uint8)
    rows = np.empty((n, len(head) + width + 2), np.uint8)
    rows[:, :len(head)] = head
    rows[:, len(head):-2] = suffixes
    rows[:, -2:] = _CRLF
    return rows.tobytes()


def hex_suffixes(keys: Sequence[int] | np.ndarray) -> np.ndarray:
    """uint8 [n, 16]: each uint64 key as 16 lowercase hex digits (``f"{key:016x}"``)."""
    hexed = np.asarray(keys, dtype=">u8").tobytes().hex().encode()
    return np.frombuffer(hexed, np.uint8).reshape(-1, 16)


def command(args: Sequence[bytes], blocks: Sequence[tuple[bytes, np.ndarray]] = (),
            tail: Sequence[bytes] = ()) -> bytes:
    """One RESP command: ``args``, then ``prefix + suffix`` for every row of every block, then
    ``tail``."""
    count = len(args) + sum(len(suffixes) for _, suffixes in blocks) + len(tail)
    parts = [b"*%d\r\n" % count, *map(bulk, args)]
    parts += [bulk_rows(prefix, suffixes) for prefix, suffixes in blocks if len(suffixes)]
    parts += map(bulk, tail)
    return b"".join(parts)


def mget_command(first: Sequence[bytes], blocks: Sequence[tuple[bytes, np.ndarray]]) -> bytes:
    """``MGET *first, *(prefix + suffix for each block's rows)``."""
    return command([b"MGET", *first], blocks)


def evalsha_command(sha: str, blocks: Sequence[tuple[bytes, np.ndarray]], args: Sequence[bytes]) -> bytes:
    """``EVALSHA sha numkeys *keys *args`` with the keys given as blocks (as :func:`mget_command`)."""
    keys = sum(len(suffixes) for _, suffixes in blocks)
    return command([b"EVALSHA", sha.encode(), b"%d" % keys], blocks, args)
