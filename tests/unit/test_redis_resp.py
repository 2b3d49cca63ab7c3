"""The hand-packed MGET is byte for byte what redis-py itself sends (pipeline.stores.resp)."""
from __future__ import annotations

import numpy as np
from redis.connection import Connection

from pipeline.stores.keys import RedisKeys
from pipeline.stores.resp import evalsha_command, hex_suffixes, mget_command


def test_hex_suffixes_are_the_key_names_hex():
    keys = [0, 1, 0xFFFFFFFFFFFFFFFF, 0x0123456789ABCDEF]
    assert [bytes(row).decode() for row in hex_suffixes(keys)] == [f"{k:016x}" for k in keys]


def test_mget_command_is_redis_py_pack_command():
    names = RedisKeys("test", "router-1")
    rng = np.random.default_rng(3)
    layers = [rng.integers(0, 2 ** 63, n).tolist() for n in (5, 0, 300)]
    expected_args = [names.table_pointer] + [name for layer, keys in enumerate(layers)
                                             for name in map(names.decision, keys, [layer] * len(keys))]
    expected = b"".join(Connection().pack_command("MGET", *expected_args))
    got = mget_command([names.table_pointer.encode()],
                       [(names.decision_prefix(layer).encode(), hex_suffixes(keys)) for layer, keys in enumerate(layers)])
    assert got == expected


def test_mget_command_of_the_pointer_alone():
    assert mget_command([b"p"], []) == b"".join(Connection().pack_command("MGET", "p"))


def test_evalsha_command_is_redis_py_pack_command():
    names = RedisKeys("test", "router-1")
    layers = [[1, 2, 3], [2 ** 64 - 1]]
    values = [bytes([i]) * 20 for i in range(4)] + [b""]
    expected_args = [name for layer, keys in enumerate(layers) for name in map(names.decision, keys, [layer] * len(keys))]
    expected = b"".join(Connection().pack_command("EVALSHA", "ab" * 20, len(expected_args), *expected_args,
                                                  60000, *values))
    got = evalsha_command("ab" * 20, [(names.decision_prefix(layer).encode(), hex_suffixes(keys))
                                      for layer, keys in enumerate(layers)], [b"60000", *values])
    assert got == expected
