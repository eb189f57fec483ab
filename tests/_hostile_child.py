"""Child process for the hostile-payload tests: a crash here fails the test, not the run.

``fuzz``: the codec and the bus parser over a corpus of hostile shapes plus hypothesis;
anything but ``CodecError`` (or a signal) is a failure. Prints a JSON summary.

``bus URL NAMESPACE``: a subscriber holding one L1 entry; reports what hostile messages
PUBLISHed by the parent did to it (dropped and counted, no reconnect, L1 kept), and that a
real invalidation still arrives afterwards.

``paths URL NAMESPACE``: prints the L2 keys its four read paths will use, waits for a line
on stdin (the parent writes hostile bytes there meanwhile), then reads every key through
sync/async ``@cached``, ``get`` and ``get_many`` and prints what came back and the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]

from tiercache import codec
from tiercache._bus import parse_message

HEADER = b"\xc1TC\x01"
SIGNER = codec.Signer(b"k" * 32)


def nest(depth: int, code: int = 1, leaf: bytes | None = None) -> bytes:
    """``depth`` ext values of ``code``, each holding a one-element array of the next."""
    data = leaf if leaf is not None else msgpack.packb([])
    for _ in range(depth):
        if code == 11:  # a row whose only column holds the next level
            data = msgpack.packb([msgpack.ExtType(11, msgpack.packb([["c"], data]))])
        elif code == 32:
            data = msgpack.packb([msgpack.ExtType(32, msgpack.packb(["x", data]))])
        else:
            data = msgpack.packb([msgpack.ExtType(code, data)])
    return data


def nest_raw(depth: int, code: int) -> bytes:
    """Ext payloads that are the next ext directly (no array in between)."""
    data = msgpack.packb(0)
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(code, data))
    return data


def entry(body: bytes) -> bytes:
    return HEADER + msgpack.packb([msgpack.ExtType(1, body), 0.0, None, 0.0])


def hostile_entries() -> Iterator[tuple[str, bytes]]:
    for depth in (10, 63, 64, 65, 100, 200, 1000, 10_000):
        for code in (1, 2, 3):
            yield f"ext{code}-depth{depth}", entry(nest(depth, code))
        yield f"raw-tuple-depth{depth}", HEADER + msgpack.packb(
            [msgpack.ExtType(1, nest_raw(depth, 1)), 0.0, None, 0.0])
    for depth in (100, 1000):
        yield f"row-depth{depth}", entry(nest(depth, 11))
        yield f"named-depth{depth}", entry(nest(depth, 32))
    deep_native = b"\x91" * 1000 + b"\xc0"  # 1000 arrays inside one level
    yield "native1000-x20ext", entry(nest(20, 1, leaf=deep_native))
    f32 = b"\xca\x00\x00\x00\x00"
    yield "native2000", HEADER + b"\x94" + b"\x91" * 2000 + b"\xc0" + f32 + b"\xc0" + f32
    for head in (b"\xc6", b"\xdb", b"\xdd", b"\xdf", b"\xc9\xff\xff\xff\xff\x01"[:1]):
        claim = head + b"\xff\xff\xff\xff"
        yield f"claims-4GB-{head.hex()}", HEADER + b"\x94" + claim + b"\x00" * 16
        yield f"claims-4GB-{head.hex()}-in-ext", entry(claim + b"\x00" * 8)
    yield "ext32-4GB", HEADER + b"\x94\xc9\xff\xff\xff\xff\x01" + b"\x00" * 8
    big = 7 ** 300_000
    yield "bigint-100KB", HEADER + codec.encode([big, 0.0, None, 0.0])
    yield "bigint-ext-1MB", entry(msgpack.packb([msgpack.ExtType(10, b"\x7f" * (1 << 20))]))
    yield "decimal-1MB", entry(msgpack.packb([msgpack.ExtType(8, b"9" * (1 << 20))]))
    yield "decimal-exp", entry(msgpack.packb([msgpack.ExtType(8, b"1e999999999999999999")]))
    yield "tz-long", entry(msgpack.packb([msgpack.ExtType(4, msgpack.packb(
        [2024, 1, 1, 0, 0, 0, 0, 0, "A" * 100_000]))]))
    yield "tz-path", entry(msgpack.packb([msgpack.ExtType(4, msgpack.packb(
        [2024, 1, 1, 0, 0, 0, 0, 0, "../../../../etc/passwd"]))]))
    yield "tz-offset", entry(msgpack.packb([msgpack.ExtType(4, msgpack.packb(
        [2024, 1, 1, 0, 0, 0, 0, 0, [10 ** 18, 0]]))]))
    yield "uuid-short", entry(msgpack.packb([msgpack.ExtType(9, b"\x00" * 3)]))
    yield "date-huge", entry(msgpack.packb([msgpack.ExtType(5, msgpack.packb(2 ** 62))]))
    yield "user-unknown-1MB-name", entry(msgpack.packb(
        [msgpack.ExtType(32, msgpack.packb(["n" * (1 << 20), 1]))]))
    yield "row-bad-ref", entry(msgpack.packb([msgpack.ExtType(11, msgpack.packb([7, 1]))]))
    yield "timestamp-ext", HEADER + b"\x94\xc7\x0c\xff" + b"\xff" * 12 + b"\xc0\xc0\xc0"
    m61 = 2 ** 61 - 1
    members = codec.encode([k * m61 for k in range(1, 30_001)])
    yield "flood-set", entry(msgpack.packb([msgpack.ExtType(2, members)]))
    pairs = b"".join(codec.encode(k * m61) + b"\x01" for k in range(1, 30_001))
    yield "flood-map", HEADER + b"\x94\xdf" + (30_000).to_bytes(4, "big") + pairs + f32 \
        + b"\xc0" + f32
    good = codec.pack_entry({"a": (1, [2, {3}]), "t": (dt_value(),)}, stored_at=1.0)
    for cut in range(len(good)):
        yield f"cut{cut}", good[:cut]
    yield "signed-garbage", b"\xc1TS\x01" + b"\x00" * 32 + nest(200)
    yield "not-bytes", "a str"  # type: ignore[misc]


def dt_value() -> Any:
    import datetime as dt

    return dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def hostile_messages() -> Iterator[tuple[str, Any]]:
    ok = {"v": 1, "src": "s" * 32}
    shapes: list[tuple[str, Any]] = [
        ("k-int", {"v": 1, "k": 5}), ("k-int-src", {**ok, "k": 5}),
        ("k-nested", {**ok, "k": [["a"]]}), ("t-dict", {**ok, "t": {"a": 1}}),
        ("v-true", {**ok, "v": True}), ("v-2", {**ok, "v": 2}), ("src-int", {"v": 1, "src": 3}),
        ("src-long", {"v": 1, "src": "s" * 65}), ("a-str", {**ok, "a": "x"}),
        ("a-true", {**ok, "a": [True]}), ("a-2", {**ok, "a": [1, 1]}),
        ("many-keys", {**ok, "k": ["x"] * 10_001}), ("many-mixed", {**ok, "k": ["x"] * 6000,
                                                                    "t": ["y"] * 6000}),
        ("long-key", {**ok, "k": ["x" * 16_385]}), ("long-pattern", {**ok, "p": ["*" * 1025]}),
        ("many-patterns", {**ok, "p": ["a*"] * 17}), ("list", [1, 2, 3]), ("none", None),
        ("wide-dict", {**ok, **{f"x{i}": i for i in range(20)}}),
    ]
    for name, shape in shapes:
        yield name, msgpack.packb(shape)
    for name, data in hostile_entries():
        if isinstance(data, bytes) and data.startswith(HEADER):
            yield f"body-{name}", data[4:]
    yield "depth200", nest(200)
    yield "huge", b"\xc4" + b"\x00" * 10
    yield "str-data", "not bytes at all"
    yield "oversize", b"\x00" * ((4 << 20) + 1)


def run_fuzz() -> dict[str, Any]:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    worst = (0.0, "")
    cases = 0

    def check(name: str, fn: Callable[[], Any]) -> None:
        nonlocal worst, cases
        start = time.perf_counter()
        with contextlib.suppress(codec.CodecError):
            fn()
        took = time.perf_counter() - start
        cases += 1
        if took > worst[0]:
            worst = (took, name)

    for name, data in hostile_entries():
        check(name, lambda d=data: codec.unpack_entry(d))
        check(f"signed-{name}", lambda d=data: codec.unpack_entry(d, signer=SIGNER))
        if isinstance(data, bytes):
            check(f"decode-{name}", lambda d=data: codec.decode(d[4:]))
    for name, data in hostile_messages():
        check(f"bus-{name}", lambda d=data: parse_message(d))
        check(f"bus-signed-{name}", lambda d=data: parse_message(d, signer=SIGNER))
    # the shapes that must pass still pass
    assert parse_message(msgpack.packb({"v": 1, "src": "s", "k": ["a"], "a": [1]}))["a"]

    valid = codec.pack_entry({"k": [(1, 2), {3}, frozenset({4})], "n": 2 ** 70},
                             stored_at=1.0, ttl=5.0)

    @settings(max_examples=1500, deadline=None, database=None)
    @given(st.binary(max_size=256))
    def random_bytes(junk: bytes) -> None:
        for payload in (junk, HEADER + junk, b"\xc1TS\x01" + junk):
            check("random", lambda p=payload: codec.unpack_entry(p))
        check("random-bus", lambda: parse_message(junk))

    @settings(max_examples=1500, deadline=None, database=None)
    @given(st.integers(0, len(valid) - 1), st.integers(0, 255), st.integers(1, 8))
    def mutations(at: int, byte: int, count: int) -> None:
        data = bytearray(valid)
        for i in range(at, min(at + count, len(data))):
            data[i] = byte
        check("mutation", lambda: codec.unpack_entry(bytes(data)))
        check("mutation-bus", lambda: parse_message(bytes(data[4:])))

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.sampled_from([1, 2, 3, 11, 32, 40]), min_size=1, max_size=300))
    def mixed_nesting(codes: list[int]) -> None:
        data = msgpack.packb(None)
        for code in codes:
            inner = msgpack.packb([["c"], data]) if code == 11 else (
                msgpack.packb(["name", data]) if code == 32 else msgpack.packb([data]))
            data = msgpack.packb(msgpack.ExtType(code, inner))
        check("mixed", lambda: codec.unpack_entry(HEADER + msgpack.packb(
            [msgpack.ExtType(1, msgpack.packb([data])), 0.0, None, 0.0])))

    random_bytes()
    mutations()
    mixed_nesting()
    return {"cases": cases, "slowest_ms": round(worst[0] * 1000, 1), "slowest": worst[1]}


def run_paths(url: str, namespace: str) -> dict[str, Any]:
    from tiercache.cache import TierCache
    from tiercache.tiers.memory import MemoryTier
    from tiercache.tiers.redis import RedisTier

    cache = TierCache(l1=MemoryTier(maxsize=100), l2=RedisTier(url), namespace=namespace,
                      bus_wait=30.0)
    loads: list[str] = []

    @cache.cached()
    async def aget(x: int) -> str:
        loads.append("async")
        return f"fresh{x}"

    @cache.cached()
    def sget(x: int) -> str:
        loads.append("sync")
        return f"fresh{x}"

    full = getattr(cache, "full_key", lambda k: f"{namespace}:{k}")
    keys = {"async": full(aget.key_for(1)), "sync": full(sget.key_for(2)), "get": full("g"),
            "get_sync": full("gs"), "many": full("m"), "many_sync": full("ms")}
    print(json.dumps(keys), flush=True)
    sys.stdin.readline()
    out: dict[str, Any] = {"sync": sget(2), "get_sync": cache.get_sync("gs", "default"),
                           "many_sync": cache.get_many_sync(["ms"])}

    async def main() -> None:
        out["async"] = await aget(1)
        out["get"] = await cache.get("g", "default")
        out["many"] = await cache.get_many(["m"])
        await cache.aclose()

    asyncio.run(main())
    out["loads"] = sorted(loads)
    out["l2"] = {k: v for k, v in cache.l2.stats().items() if k in ("errors", "misses")}  # type: ignore[union-attr]
    return out




def run_bus(url: str, namespace: str) -> dict[str, Any]:
    """Subscribe, hold one L1 entry, then report what the hostile messages did."""
    from tiercache.cache import TierCache
    from tiercache.tiers.memory import MemoryTier
    from tiercache.tiers.redis import RedisTier

    async def main() -> dict[str, Any]:
        cache = TierCache(l1=MemoryTier(maxsize=100), l2=RedisTier(url), namespace=namespace,
                          bus_wait=30.0)

        @cache.cached()
        async def f(x: int) -> int:
            return x

        await f(1)
        assert cache.bus is not None
        print(json.dumps({"channel": cache.bus.channel, "rel": f.key_for(1)}), flush=True)
        expected = int(await asyncio.to_thread(sys.stdin.readline))
        stats = cache.stats()["bus"]
        deadline = time.monotonic() + 60
        while stats["dropped"] < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            stats = cache.stats()["bus"]
        held = len(f.segment)  # type: ignore[attr-defined]
        print(json.dumps({"dropped": stats["dropped"]}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent sent a real invalidation
        while len(f.segment) and time.monotonic() < deadline:  # type: ignore[attr-defined]
            await asyncio.sleep(0.02)
        out = {"held_after_garbage": held, "held_after_invalidation": len(f.segment),  # type: ignore[attr-defined]
               **{k: v for k, v in cache.stats()["bus"].items() if not isinstance(v, dict)}}
        await cache.aclose()
        return out

    return asyncio.run(main())


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)  # deeper than the default: the codec must not rely on it
    modes = {"fuzz": run_fuzz, "paths": run_paths, "bus": run_bus}
    result = modes[sys.argv[1]](*sys.argv[2:])
    print(json.dumps(result), flush=True)
