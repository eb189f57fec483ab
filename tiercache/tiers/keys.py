"""Redis key layout of :class:`~tiercache.tiers.redis.RedisTier` and its Lua scripts.

Documented in one place because every process and version sharing a Redis must agree on it.

* **entries**: the key the core built, used as-is: ``"{namespace}:" + user key`` for
  ``cache.set``, ``"{namespace}:{module}.{qualname}:{digest}"`` for ``@cached``. The
  *namespace* of a key is the text before its first ``":"`` (``""`` for a key without one:
  a tier used directly).
* **internal keys** live under the namespace, in the reserved space ``"{namespace}:~tc:"``
  (:data:`RESERVED`):

  - tag index: ``{ns}:~tc:tag:{<tag>}``, a ZSET of entry keys scored by their expiry
    (Unix ms; ``+inf`` for entries without expiry). Each write trims expired members and
    the set expires 1 s after its longest-lived member, so a hot tag holds about the live
    entries only. The tag is the hash tag (one slot per tag: add/pop are single-key
    scripts); the indexed entries live anywhere and are deleted grouped per slot/node.
  - lease: ``{ns}:~tc:lease:{<h>}<key>``, where ``<h>`` is the key's own hash tag, or the
    key itself when it has no braces, or a short string hashing to the key's slot: the
    lease lives in the entry's slot (it dies and fails over with it). A namespace that
    itself contains ``{`` gives the lease another slot; correctness does not depend on it.
  - store (:mod:`tiercache.store`): ``{ns}:~tc:store:{<ns>:<store>}:<part>``, all of one
    store in one slot (its hash tag): ``journal`` (the write-behind Redis Stream), ``dead``
    (the dead-letter list), ``hb:<consumer>`` (a flusher's heartbeat). These hold
    acknowledged writes, so namespace-wide sweeps (``cache.clear()``) leave them alone
    (:func:`is_durable`); only ``FLUSHDB`` (``RedisTier.clear()``) drops them.
  - L3 (:mod:`tiercache.tiers._query_redis`): ``{ns}:~tc:l3:gen:{<shard>}`` (a HASH of table
    generations per shard) and ``{ns}:~tc:l3:e:<plan>:<params>`` (a result set with the
    generations it was read under).

* **why collisions cannot happen**: namespaces are non-empty and contain no ``":"``, so a
  key of namespace B never starts with ``"A:"``; a namespace called ``tc`` (the old
  global prefix) owns ``tc:...`` only. Inside a namespace the reserved space is *refused*,
  not merely unlikely: ``set``/``set_many``/``add_tags``/``delete``/``delete_many`` raise
  ``ValueError`` for a key whose part after the first ``":"`` starts with ``~tc:`` (no
  ``@cached`` key can: a module name never starts with ``~``). ``delete_pattern`` leaves
  the reserved space alone unless the pattern is namespace-wide (``"{ns}:*"`` or ``"*"``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

from redis.crc import key_slot

__all__ = [
    "RELEASE_LUA",
    "RESERVED",
    "TAG_ADD_LUA",
    "TAG_POP_LUA",
    "check_user_key",
    "decode_members",
    "internal_prefix",
    "is_durable",
    "is_reserved",
    "key_text",
    "lease_key",
    "namespace_of",
    "namespace_wide",
    "store_key",
    "tag_add_args",
    "tag_key",
]

RESERVED: Final = "~tc:"


def namespace_of(key: str) -> str:
    """The namespace part of a full key (``""`` when the key has no ``":"``)."""
    i = key.find(":")
    return key[:i] if i > 0 else ""


def is_reserved(key: str) -> bool:
    """Does ``key`` fall into some namespace's reserved space?"""
    return key.startswith(RESERVED, key.find(":") + 1)


def is_durable(key: str) -> bool:
    """Does ``key`` hold acknowledged writes (a store's journal, dead letters)?"""
    return key.startswith(RESERVED + "store:", key.find(":") + 1)


def store_key(namespace: str, store: str, part: str) -> str:
    """A store's internal key; every part of one store shares the hash tag (one slot)."""
    return f"{internal_prefix(namespace)}store:{{{namespace}:{store}}}:{part}"


def key_text(key: bytes | str) -> str:
    """A key from a reply as text (bytes unless the client decodes)."""
    return key if isinstance(key, str) else key.decode("utf-8", "replace")


def check_user_key(key: str) -> None:
    """``ValueError`` for a key in the reserved space (see the module docstring)."""
    if is_reserved(key):
        raise ValueError(
            f"key {key[:80]!r} is in tiercache's reserved space ('<namespace>:{RESERVED}...' "
            "holds tag sets and leases); choose a key not starting with '~tc:'")


def check_user_keys(keys: Iterable[str]) -> None:
    for key in keys:
        if RESERVED in key:  # cheap pre-filter; the exact rule in check_user_key
            check_user_key(key)


def internal_prefix(namespace: str) -> str:
    return f"{namespace}:{RESERVED}"


def namespace_wide(pattern: str) -> bool:
    """Does a delete_pattern ``pattern`` flush whole namespaces (and so their internals)?"""
    return pattern == "*" or (pattern.endswith(":*") and pattern.count(":") == 1)


def tag_key(tag: str, namespace: str = "") -> str:
    """The Redis key of a tag's index ZSET in ``namespace`` (the tag is the hash tag)."""
    return internal_prefix(namespace) + "tag:{" + tag + "}"


def _hash_tag(key: str) -> str | None:
    start = key.find("{")
    if start == -1:
        return None
    end = key.find("}", start + 1)
    return key[start + 1:end] if end > start + 1 else None


_slot_tags: dict[int, str] = {}


def _tag_for_slot(slot: int) -> str:
    """A short string hashing to ``slot`` (table built once, only if ever needed)."""
    if not _slot_tags:
        i = 0
        while len(_slot_tags) < 16384:
            _slot_tags.setdefault(key_slot(str(i).encode()), str(i))
            i += 1
    return _slot_tags[slot]


def lease_key(key: str) -> str:
    """The lease key of ``key``: reserved space of its namespace, the key's own slot."""
    prefix = internal_prefix(namespace_of(key)) + "lease:"
    tag = _hash_tag(key)
    if tag is not None:
        return prefix + "{" + tag + "}" + key
    if "{" not in key and "}" not in key:
        return prefix + "{" + key + "}"
    return prefix + "{" + _tag_for_slot(key_slot(key.encode())) + "}" + key


def tag_add_args(key: str, tags: Iterable[str], ttl: float | None) -> list[tuple[Any, ...]]:
    """EVAL arguments indexing ``key`` under each tag of its namespace (ttl None = forever)."""
    ms = -1 if ttl is None or ttl == math.inf else int(max(ttl, 0.0) * 1000)
    ns = namespace_of(key)
    return [(TAG_ADD_LUA, 1, tag_key(tag, ns), key, ms) for tag in dict.fromkeys(tags)]


def decode_members(replies: Iterable[Any]) -> list[Any]:
    """Flatten the tag-pop replies into one de-duplicated key list (errors skipped)."""
    keys: dict[Any, None] = {}
    for members in replies:
        if isinstance(members, list):
            for member in members:
                keys[member] = None
    return list(keys)


# Compare-and-delete: only the holder's token releases the lease.
RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Index one member, scored by its expiry on the server's clock (ARGV[2] ms, -1 = never);
# trim what expired; the set expires 1 s after its longest-lived member. Redis 6.2 needs
# replicate_commands() to write after TIME (a no-op from Redis 7 on).
TAG_ADD_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local want = tonumber(ARGV[2])
if want < 0 then
  redis.call('ZADD', KEYS[1], '+inf', ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + want, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if top[2] == nil or top[2] == 'inf' then
  redis.call('PERSIST', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], tonumber(top[2]) + 1000)
end
return 1
"""

# Read the live members and drop the set atomically: an entry tagged concurrently is either
# popped here or lands in a fresh set, never lost between ZRANGEBYSCORE and DEL.
TAG_POP_LUA: Final = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
redis.call('DEL', KEYS[1])
return members
"""
