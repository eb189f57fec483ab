"""The L2 codec: round-trips of every supported type, refusal of foreign/corrupt payloads."""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import math
import uuid
import zoneinfo
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiercache
from tiercache import codec
from tiercache.codec import CodecError

ZONES = [zoneinfo.ZoneInfo(z) for z in ("UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata")]
tzs = st.one_of(
    st.none(),
    st.just(dt.UTC),
    st.sampled_from(ZONES),
    st.integers(-23 * 60, 23 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)
hashables = st.one_of(
    st.integers(-(2**70), 2**70),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.booleans(),
    st.none(),
    st.uuids(),
    st.dates(),
)
scalars = st.one_of(
    hashables,
    st.floats(allow_nan=False),
    st.datetimes(timezones=tzs),
    st.times(timezones=tzs),
    st.timedeltas(),
    st.decimals(allow_nan=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=5), hashables), inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.dictionaries(st.tuples(hashables, hashables), inner, max_size=2),
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equality that also checks exact types and tzinfo (== alone ignores both)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (
            a.keys() == b.keys()
            and all(same(a[k], b[k]) for k in a)
            and all(
                same(ka, kb)
                for ka, kb in zip(sorted(a, key=repr), sorted(b, key=repr), strict=True)
            )
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dt.datetime | dt.time):
        return bool(a == b and a.tzinfo == b.tzinfo and a.fold == b.fold)
    if isinstance(a, Decimal):
        return str(a) == str(b)
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(values)
def test_roundtrip_entry(value: Any) -> None:
    data = codec.pack_entry(value, stored_at=1700000000.5, ttl=30, load_time=0.25)
    entry = codec.unpack_entry(data)
    assert same(entry.value, value), (entry.value, value)
    assert (entry.stored_at, entry.ttl, entry.load_time) == (1700000000.5, 30.0, 0.25)
    assert same(codec.decode(codec.encode(value)), value)


def test_specials() -> None:
    naive = dt.datetime(2024, 3, 31, 2, 30)
    paris = dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    cases: list[Any] = [
        naive,
        paris,
        dt.time(23, 59, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30))),
        Decimal("-0"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("-Infinity"),
        2**64,
        -(2**63) - 1,
        math.inf,
        (),
        ((),),
        [(1, [2, (3,)])],
        {(1, "a"): frozenset({(2, 3)})},
        b"\x00\xff",
        uuid.UUID(int=0),
    ]
    for value in cases:
        assert same(codec.decode(codec.encode(value)), value), value
    decoded = codec.decode(codec.encode(paris))
    assert (
        decoded.tzinfo is zoneinfo.ZoneInfo("Europe/Paris")
        and decoded.utcoffset() == paris.utcoffset()
    )
    assert codec.decode(codec.encode(naive)).tzinfo is None
    assert math.isnan(codec.decode(codec.encode(math.nan)))
    assert codec.unpack_entry(codec.pack_entry(1, stored_at=0)).ttl is None


class Unknown:
    pass


@pytest.mark.parametrize(
    "value", [Unknown(), {"k": [Unknown()]}, (1, {Unknown()}), object(), lambda: 1]
)
def test_unencodable_raises_type_error_naming_type(value: Any) -> None:
    with pytest.raises(TypeError) as info:
        codec.pack_entry(value, stored_at=0)
    assert (
        "Unknown" in str(info.value) or "object" in str(info.value) or "function" in str(info.value)
    )


def test_surrogates_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        codec.encode("\ud800")


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1TC",
        b"\xc1TC\x01",
        b"\xc1TC\x01\xff\xff",
        b"\xc1TC\x01" + msgpack.packb([1, 2]),
        b"\xc1TC\x01" + msgpack.packb([1, "x", None, 0]),
        b"\xc1TC\x01" + msgpack.packb([msgpack.ExtType(99, b"x"), 0, None, 0]),
        b"\xc1TC\x01" + msgpack.packb([msgpack.ExtType(4, b"\x93\x01"), 0, None, 0]),
        b"\xc1TC\x01"
        + msgpack.packb([msgpack.ExtType(32, msgpack.packb(["os.system", "x"])), 0, None, 0]),
        b"\xc1TC\x01" + msgpack.packb({1: 2}),
        b"\xc1TC\x00" + msgpack.packb([1, 0, None, 0]),
        msgpack.packb({"value": 1}),
        msgpack.packb([1, 0, None, 0]),
        b'{"json": true}',
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01a\x94.",  # a pickle
    ],
)
def test_foreign_or_corrupt_payload_is_codec_error(payload: bytes) -> None:
    with pytest.raises(CodecError):
        codec.unpack_entry(payload)


def test_newer_version_refused_and_truncation() -> None:
    good = codec.pack_entry({"a": (1, 2)}, stored_at=5.0)
    with pytest.raises(CodecError, match="newer"):
        codec.unpack_entry(good[:3] + bytes([codec.FORMAT_VERSION + 1]) + good[4:])
    for cut in range(len(good)):
        with pytest.raises(CodecError):
            codec.unpack_entry(good[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_escape_as_other_errors(junk: bytes) -> None:
    for payload in (junk, b"\xc1TC\x01" + junk):
        with contextlib.suppress(CodecError):
            codec.unpack_entry(payload)


class Money:
    def __init__(self, amount: Decimal, currency: str) -> None:
        self.amount, self.currency = amount, currency

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and (self.amount, self.currency) == (
            other.amount,
            other.currency,
        )

    def __hash__(self) -> int:
        return hash((self.amount, self.currency))


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


def test_register_user_types() -> None:
    codec.register(Money, lambda m: [m.amount, m.currency], lambda d: Money(*d))
    codec.register(Point, lambda p: (p.x, p.y), lambda d: Point(*d), code=40)
    try:
        value = {"price": Money(Decimal("9.99"), "EUR"), "pts": [Point(1, 2)]}
        out = codec.unpack_entry(codec.pack_entry(value, stored_at=0)).value
        assert out["price"] == Money(Decimal("9.99"), "EUR")
        assert (out["pts"][0].x, out["pts"][0].y) == (1, 2)
        data = codec.pack_entry(Money(Decimal(1), "USD"), stored_at=0)
        with pytest.raises(ValueError):
            codec.register(Unknown, str, str, code=40)
        with pytest.raises(ValueError):
            codec.register(Unknown, str, str, code=5)
    finally:
        codec.unregister(Money)
        codec.unregister(Point)
    with pytest.raises(CodecError):  # a process that does not know the type: a miss
        codec.unpack_entry(data)


FORBIDDEN = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve"}


def test_no_pickle_anywhere_in_the_package() -> None:
    root = Path(tiercache.__file__).parent
    offenders = []
    for path in [*root.rglob("*.py"), *root.parent.joinpath("ext").glob("*.p*")]:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            for node in ast.walk(ast.parse(text)):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                if any(n.split(".")[0] in FORBIDDEN for n in names):
                    offenders.append(str(path))
        elif "pickle" in text.replace("auto_pickle", ""):
            offenders.append(str(path))
    assert not offenders


# ---------------------------------------------------------------------------- signing

KEY, OLD = b"k" * 32, "an-older-key-0123456789"


def test_signed_envelopes_round_trip_and_rotate() -> None:
    signer = codec.Signer([KEY, OLD])
    data = codec.pack_entry({"a": (1, 2)}, stored_at=5.0, signer=signer, context="ns:k")
    assert data[:3] == b"\xc1TS"
    assert codec.unpack_entry(data, signer=signer, context="ns:k").value == {"a": (1, 2)}
    old = codec.pack_entry(1, stored_at=0, signer=codec.Signer(OLD), context=b"ns:k")
    assert codec.unpack_entry(old, signer=signer, context="ns:k").value == 1  # rotation
    # signing off reads signed entries too (documented: switching on/off keeps the cache warm)
    assert codec.unpack_entry(data).value == {"a": (1, 2)}
    assert codec.signer_from(None) is None and codec.signer_from(signer) is signer
    assert "k" * 16 not in repr(signer) and "older" not in repr(signer)


@pytest.mark.parametrize("case", ["unsigned", "other-key", "other-context", "flipped", "cut"])
def test_signing_on_refuses_what_it_did_not_sign(case: str) -> None:
    signer = codec.Signer(KEY)
    good = codec.pack_entry([1, 2], stored_at=0, signer=signer, context="ns:k")
    payload, ctx = {
        "unsigned": (codec.pack_entry([1, 2], stored_at=0), "ns:k"),
        "other-key": (codec.pack_entry([1, 2], stored_at=0, signer=codec.Signer(OLD),
                                       context="ns:k"), "ns:k"),
        "other-context": (good, "ns:other"),  # a signed value moved to another key
        "flipped": (good[:-1] + bytes([good[-1] ^ 1]), "ns:k"),
        "cut": (good[:20], "ns:k"),
    }[case]
    with pytest.raises(CodecError):
        codec.unpack_entry(payload, signer=signer, context=ctx)


def test_signature_checked_before_the_body_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Any] = []
    monkeypatch.setattr(codec, "decode", lambda data: parsed.append(data))
    forged = b"\xc1TS\x01" + b"\x00" * 32 + msgpack.packb([1, 0.0, None, 0.0])
    with pytest.raises(CodecError, match="signature"):
        codec.unpack_entry(forged, signer=codec.Signer(KEY))
    assert parsed == []


def test_weak_keys_refused() -> None:
    for bad in (b"short", [], ""):
        with pytest.raises(ValueError):
            codec.Signer(bad)


# ---------------------------------------------------------------------------- rows


def _record(names: list[str], values: tuple[Any, ...]) -> Any:
    from asyncpg.protocol.protocol import _create_record  # asyncpg's own test helper

    return _create_record({n: i for i, n in enumerate(names)}, values)


def test_records_round_trip_as_rows_with_names_once() -> None:
    rows = [_record(["id", "name"], (i, f"n{i}")) for i in range(1000)]
    out = codec.decode(codec.encode(rows))
    assert all(type(r) is tiercache.Row for r in out)
    assert out == rows and [dict(r) for r in out] == [dict(r) for r in rows]
    once = len(codec.encode(rows))
    as_tuples = len(codec.encode([tuple(r) for r in rows]))
    # the column names once, then a byte or two per row naming them (not the names 1000 times)
    assert once <= as_tuples + 2 * len(rows) < len(codec.encode([dict(r) for r in rows]))
    assert codec.decode(codec.encode(out)) == rows  # Rows encode like Records


def test_nested_rows_and_mixed_schemas() -> None:
    inner = _record(["x", "y"], (1, 2))
    outer = _record(["id", "pt", "pts"], (7, inner, [inner, _record(["z"], (3,))]))
    value = {"a": [outer, outer], "b": (inner, _record(["id", "pt", "pts"], (8, None, [])))}
    out = codec.decode(codec.encode(value))
    assert out == value
    assert out["a"][0]["pt"]["y"] == 2 and out["b"][1].get("id") == 8
    assert list(out["a"][1]["pts"][1].keys()) == ["z"]


@pytest.mark.parametrize("body", [
    [msgpack.ExtType(11, msgpack.packb([0, 1]))],  # reference to no columns
    [msgpack.ExtType(11, msgpack.packb([["a", "b"], 1]))],  # one value for two columns
    [msgpack.ExtType(11, msgpack.packb([["a", 5], 1, 2]))],  # a non-str column name
    [msgpack.ExtType(11, msgpack.packb([]))],
    [msgpack.ExtType(11, msgpack.packb({"a": 1}))],
])
def test_malformed_rows_are_codec_errors(body: list[Any]) -> None:
    with pytest.raises(CodecError):
        codec.decode(msgpack.packb(body))


# ---------------------------------------------------------------------------- hash flooding

M61 = 2**61 - 1  # ints k * M61 all hash to 0


@pytest.mark.parametrize("code", [2, 3])
def test_colliding_set_members_are_refused(code: int) -> None:
    members = codec.encode([k * M61 for k in range(1, 20_001)])  # 260 KB: 10 s before
    with pytest.raises(CodecError, match="hash"):
        codec.decode(msgpack.packb(msgpack.ExtType(code, members)))


def test_colliding_map_keys_are_refused() -> None:
    n = 20_000
    pairs = b"".join(codec.encode(k * M61) + b"\x01" for k in range(1, n + 1))
    with pytest.raises(CodecError, match="hash"):
        codec.decode(b"\xdf" + n.to_bytes(4, "big") + pairs)


def test_many_legit_hashable_keys_still_decode() -> None:
    value = {"rows": [{(i, "x"): dt.date(2024, 1, 1 + i % 28)} for i in range(5000)],
             "ids": {uuid.UUID(int=i) for i in range(3000)}, "neg": {-1, -2}}
    assert same(codec.decode(codec.encode(value)), value)


def test_ip_addresses_and_uuid_subclasses() -> None:
    import ipaddress

    import asyncpg.pgproto.pgproto as pgproto

    values = [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1"),
              ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"),
              ipaddress.ip_interface("10.1.2.3/24"), ipaddress.ip_interface("fe80::1/64")]
    assert same(codec.decode(codec.encode(values)), values)
    pg_uuid = pgproto.UUID("12345678-1234-5678-1234-567812345678")  # what asyncpg returns
    out = codec.decode(codec.encode(pg_uuid))
    assert type(out) is uuid.UUID and out == pg_uuid
    with pytest.raises(CodecError):
        codec.decode(msgpack.packb(msgpack.ExtType(12, msgpack.packb([9, "1.2.3.4"]))))


def test_unencodable_error_names_the_public_fix_once() -> None:
    with pytest.raises(codec.UnencodableError) as info:
        codec.encode({"k": [Unknown()]})
    assert info.value.type is Unknown
    assert str(info.value).count("tiercache.register_type(cls, encode, decode)") == 1
    assert "tiercache.codec.register" not in str(info.value)


def test_decode_reentered_from_a_user_decoder() -> None:
    """A registered decoder may call codec.decode itself: the outer payload's state (ext
    depth, row schemas) survives it, and nothing is left behind for the next payload."""

    class Wrapped:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

    codec.register(Wrapped, lambda w: codec.encode(w.inner),
                   lambda b: Wrapped(codec.decode(b)), name="tests.Wrapped")
    try:
        out = codec.decode(codec.encode([Wrapped((1, (2,))), (3,), Wrapped([4])]))
        assert out[0].inner == (1, (2,)) and out[1] == (3,) and out[2].inner == [4]
        assert codec._dec.depth == 0 and codec._dec.rows is None and not codec._dec.careful
    finally:
        codec.unregister(Wrapped)
