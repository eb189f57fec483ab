"""``$TIERCACHE_REDIS_URL`` / ``$TIERCACHE_PG_DSNS``: existing servers for tests and examples.

``$TIERCACHE_PG_DSNS`` takes either a JSON object ``{"s1": "postgresql://...", ...}`` (no
ambiguity, whatever the DSNs contain) or ``s1=postgresql://...,s2=postgresql://...``. In the
second form an item starts at a comma followed by ``name=``, so multi-host URLs
(``postgresql://u@h1:5432,h2:5432/db``) and key/value DSNs (``s1=host=h port=5432``) stay whole.
Errors name the item's position and shard, never its DSN: DSNs carry passwords.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping

__all__ = ["PG_DSNS_ENV", "REDIS_URL_ENV", "export_lines", "parse_pg_dsns"]

REDIS_URL_ENV = "TIERCACHE_REDIS_URL"
PG_DSNS_ENV = "TIERCACHE_PG_DSNS"

_NAME = r"[A-Za-z0-9_.-]+"
_ITEM_START = re.compile(rf",\s*(?={_NAME}=)")
_ITEM = re.compile(rf"\s*({_NAME})=(.*\S)\s*", re.DOTALL)
_USAGE = (f"${PG_DSNS_ENV} must be a JSON object {{\"s1\": \"postgresql://...\", ...}} "
          "or name=dsn pairs separated by commas (s1=postgresql://...,s2=postgresql://...)")


def parse_pg_dsns(raw: str) -> dict[str, str]:
    """Shard name -> DSN from either accepted form; ``ValueError`` (without DSNs) otherwise."""
    text = raw.strip()
    if not text:
        raise ValueError(f"{_USAGE}; it is empty")
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            raise ValueError(f"{_USAGE}; it starts with '{{' but is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise ValueError(_USAGE)
        bad = [str(k) for k, v in parsed.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ValueError(f"{_USAGE}; the DSN of shard(s) {bad} is not a non-empty string")
        if not parsed:
            raise ValueError(f"{_USAGE}; it names no shard")
        return {str(k): v for k, v in parsed.items()}
    dsns: dict[str, str] = {}
    for position, item in enumerate(_ITEM_START.split(text), start=1):
        match = _ITEM.fullmatch(item)
        if match is None:
            raise ValueError(f"{_USAGE}; item {position} is not name=dsn")
        name, dsn = match.groups()
        if name in dsns:
            raise ValueError(f"{_USAGE}; shard {name!r} is given twice")
        dsns[name] = dsn
    return dsns


def export_lines(redis_url: str | None, pg_dsns: Mapping[str, str]) -> list[str]:
    """``export ...`` lines for a POSIX shell that point the variables at these servers."""
    lines = []
    if redis_url:
        lines.append(f"export {REDIS_URL_ENV}={shlex.quote(redis_url)}")
    if pg_dsns:
        lines.append(f"export {PG_DSNS_ENV}={shlex.quote(json.dumps(dict(pg_dsns)))}")
    return lines
