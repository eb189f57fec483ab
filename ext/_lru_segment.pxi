# Segments of the LRU store; included by _lru_store.pxi.


@cython.final
@cython.auto_pickle(False)
cdef class Segment:
    """One function's (or one namespace's) keys inside a shared LRU store.

    All segments share the store's recency list and bounds, so one ``maxsize`` caps the
    whole process; each segment has its own dict (no key prefix to build on a hit) and its
    own hit/miss/eviction counters (per-function metrics).
    """
    cdef dict map
    cdef readonly LRU store
    cdef readonly object name
    cdef unsigned long long _hits, _misses, _sets, _deletes, _ev_size, _ev_expired

    def get(self, key, default=None):
        """Fresh value for ``key`` (marks it recently used) or ``default``; counts hit/miss."""
        value = self.store._lookup(self, key)
        if value is _MISS:
            return default
        if value is _UNHASHABLE:
            raise TypeError(f"unhashable key type: {type(key).__name__!r}")
        return value

    def put(self, key, value, ttl=None):
        """Store ``value``; ``ttl`` overrides the default (None = default, inf = never)."""
        self.store._put(self, key, value, ttl)

    def delete(self, key):
        """Remove ``key``; True if it was present."""
        if self.store._discard(self, key):
            self._deletes += 1
            return True
        return False

    def clear(self):
        """Drop this segment's entries."""
        self.store._clear_segment(self)

    def expires_at(self, key):
        """Expiry time of ``key`` on the store's clock, None if it never expires/is absent."""
        return self.store._expires_at(self, key)

    def keys(self):
        """Snapshot of this segment's keys, least recently used first."""
        return self.store._keys(self)

    def delete_where(self, predicate):
        """Delete every key for which ``predicate(key)`` is true; returns how many."""
        cdef Py_ssize_t n = 0
        for key in self.store._keys(self):
            if predicate(key) and self.store._discard(self, key):
                self._deletes += 1
                n += 1
        return n

    def stats(self):
        """This segment's counters; ``size`` counts live entries only."""
        self.store._prune()
        return {
            "hits": self._hits,
            "misses": self._misses,
            "sets": self._sets,
            "deletes": self._deletes,
            "evictions_size": self._ev_size,
            "evictions_expired": self._ev_expired,
            "size": len(self.map),
        }

    def reset_stats(self):
        self._hits = self._misses = self._sets = self._deletes = 0
        self._ev_size = self._ev_expired = 0

    def __len__(self):
        self.store._prune()
        return len(self.map)

    def __contains__(self, key):
        return self.store._contains(self, key)

    def __repr__(self):
        return f"<Segment {self.name!r} size={len(self.map)}>"


cdef inline _Node N(PyObject* p):
    return <_Node>p
