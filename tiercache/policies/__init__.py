"""Cache policies as small objects: read policies decide freshness and background reloads
(:mod:`tiercache.policies.read`), write policies decide when the system of record is written
(:mod:`tiercache.policies.write`)."""

from __future__ import annotations

from tiercache.policies.read import Expiry, ReadPolicy, RefreshAhead, XFetch
from tiercache.policies.write import Retry, WriteBehind, WriteThrough

__all__ = ["Expiry", "ReadPolicy", "RefreshAhead", "Retry", "WriteBehind", "WriteThrough",
           "XFetch"]
