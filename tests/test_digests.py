"""The L1 index's compact digest table behaves like a dict (and the index keeps digests in it)."""

from __future__ import annotations

import random

from tiercache._digests import DigestTable


def test_digest_table_matches_a_dict_under_random_operations() -> None:
    rng = random.Random(7)
    table, model = DigestTable(), {}
    pool = [rng.randbytes(16) for _ in range(600)] + [bytes(16), b"\x00" * 8 + b"\x01" * 8]
    for step in range(20_000):
        digest = rng.choice(pool)
        op = rng.random()
        if op < 0.5:
            table.set(digest, step)
            model[digest] = step
        elif op < 0.8:
            assert table.pop(digest) == model.pop(digest, None)
        else:
            assert table.get(digest) == model.get(digest)
        if step % 2500 == 0:
            table.retain(lambda held: held if held % 3 else None)  # type: ignore[operator]
            model = {d: v for d, v in model.items() if v % 3}
        assert len(table) == len(model)
    assert dict(table.items()) == model
    assert all(d in table for d in model)
    table.clear()
    assert len(table) == 0 and table.items() == []
