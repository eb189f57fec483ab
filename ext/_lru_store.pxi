# The LRU store; included by _lru.pyx (one module so the hit path calls it as C).

cdef Py_ssize_t _UNBOUNDED = PY_SSIZE_T_MAX
cdef object _MISS = object()          # internal lookup result: no fresh entry
cdef object _UNHASHABLE = object()    # internal lookup result: key is unhashable


@cython.auto_pickle(False)
cdef class _Node:
    """One entry. Raw pointers keep it out of the GC and 56 bytes small."""
    cdef PyObject* key
    cdef PyObject* value
    cdef PyObject* prev      # NULL <=> not linked in the list
    cdef PyObject* next
    cdef double expires      # 0.0 = never
    cdef PyObject* seg       # borrowed: the Segment whose dict holds this node

    def __dealloc__(self):
        Py_XDECREF(self.key)
        Py_XDECREF(self.value)


@cython.final
@cython.auto_pickle(False)
cdef class _SizedNode(_Node):
    """A node of a byte-bounded store (only those pay 8 more bytes for the size)."""
    cdef Py_ssize_t size


cdef inline Py_ssize_t _size(_Node node) noexcept:
    return (<_SizedNode>node).size


cdef enum:
    _HEAP_MIN_LIMIT = 1024  # below this many items the expiry heap is never compacted


cdef class LRU


include "_lru_segment.pxi"


@cython.auto_pickle(False)
@cython.no_gc_clear  # segments break the LRU<->Segment cycle; __dealloc__ needs _root
cdef class LRU:
    """LRU bounded by entries (and optionally bytes), with per-entry TTL.

    The store's own get/put/delete/keys act on its default segment; ``segment(name)``
    gives others. ``len()``, ``clear()``, ``expire()`` and ``stats()`` cover all segments.

    ``len()``, ``keys()`` and ``stats()["size"]`` never count an expired entry (they agree
    with ``in`` and ``get``, like cachetools' TTLCache): entries with a TTL also sit in a
    min-heap by expiry (8 bytes each: a node's ``expires`` never changes while it is
    linked; a put that changes it links a new node), and those calls first drop what has
    expired from its top: O(log n) per entry, paid once. The hit path never touches it.
    """
    cdef Segment _default
    cdef dict _segments
    cdef _Node _root
    cdef Py_ssize_t _count, _maxsize, _maxbytes, _bytes
    cdef double _ttl
    cdef object _clock, _sizeof
    cdef bint _sized
    cdef PyObject** _heap                # owned node references, min-heap by ``expires``
    cdef Py_ssize_t _heap_len, _heap_cap, _heap_limit

    def __cinit__(self, *args, **kwargs):
        self._heap = NULL
        self._heap_len = self._heap_cap = 0
        self._heap_limit = _HEAP_MIN_LIMIT
        self._segments = {}
        self._root = _Node.__new__(_Node)
        self._root.prev = self._root.next = <PyObject*>self._root
        self._default = self._new_segment(None)

    def __init__(self, maxsize=100_000, ttl=None, maxbytes=None, getsizeof=None, clock=None):
        if maxsize is not None and maxsize < 0:
            raise ValueError("maxsize must be >= 0 or None")
        if ttl is not None and not ttl > 0:
            raise ValueError("ttl must be > 0 or None")
        if maxbytes is not None and maxbytes < 0:
            raise ValueError("maxbytes must be >= 0 or None")
        if maxbytes is not None and getsizeof is None:
            raise ValueError("maxbytes needs getsizeof=, a callable giving a value's size")
        self._maxsize = _UNBOUNDED if maxsize is None else maxsize
        self._ttl = 0.0 if ttl is None or ttl == INFINITY else ttl
        self._sized = maxbytes is not None
        self._maxbytes = maxbytes if maxbytes is not None else 0
        self._sizeof = getsizeof
        self._clock = clock

    def __dealloc__(self):
        # Release the heap's and the list's references (the dicts' go with the segments).
        self._heap_release()
        cdef PyObject* p = self._root.next if self._root is not None else NULL
        cdef PyObject* nxt
        if p == NULL:
            return
        while p != <PyObject*>self._root:
            nxt = N(p).next
            N(p).prev = N(p).next = NULL
            Py_DECREF(<object>p)
            p = nxt
        self._root.prev = self._root.next = NULL

    # ------------------------------------------------------------------ internals

    cdef Segment _new_segment(self, object name):
        cdef Segment seg = Segment.__new__(Segment)
        seg.map = {}
        seg.store = self
        seg.name = name
        return seg

    cdef inline double _now(self) except? -1.0:
        if self._clock is None:
            return tc_monotonic()
        return self._clock()

    cdef inline void _link_front(self, _Node node) noexcept:
        cdef PyObject* first = self._root.next
        Py_INCREF(node)                      # the list's reference
        node.prev = <PyObject*>self._root
        node.next = first
        N(first).prev = <PyObject*>node
        self._root.next = <PyObject*>node
        self._count += 1
        if self._sized:
            self._bytes += _size(node)

    cdef inline void _move_front(self, _Node node) noexcept:
        self._move_front_p(<PyObject*>node)

    cdef inline void _move_front_p(self, PyObject* p) noexcept:
        cdef PyObject* root = <PyObject*>self._root
        if N(root).next == p:
            return
        N(N(p).prev).next = N(p).next
        N(N(p).next).prev = N(p).prev
        N(p).prev = root
        N(p).next = N(root).next
        N(N(root).next).prev = p
        N(root).next = p

    # ------------------------------------------------------------------ expiry heap

    cdef int _heap_push(self, _Node node) except -1:
        """Remember that ``node`` expires (items of dropped nodes go stale, skipped later)."""
        cdef Py_ssize_t i, parent, cap
        cdef PyObject** grown
        cdef double at = node.expires
        if self._heap_len >= self._heap_limit:
            self._heap_compact()
        if self._heap_len == self._heap_cap:
            cap = self._heap_cap + (self._heap_cap >> 3) + 16   # list-like growth, small slack
            grown = <PyObject**>PyMem_Realloc(self._heap, cap * sizeof(PyObject*))
            if grown == NULL:
                raise MemoryError()
            self._heap, self._heap_cap = grown, cap
        Py_INCREF(node)
        i = self._heap_len
        self._heap_len += 1
        while i > 0:
            parent = (i - 1) >> 1
            if N(self._heap[parent]).expires <= at:
                break
            self._heap[i] = self._heap[parent]
            i = parent
        self._heap[i] = <PyObject*>node
        return 0

    cdef void _heap_sift_down(self, Py_ssize_t i) noexcept:
        cdef PyObject* item = self._heap[i]
        cdef double at = N(item).expires
        cdef Py_ssize_t child, n = self._heap_len
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and N(self._heap[child + 1]).expires < N(self._heap[child]).expires:
                child += 1
            if at <= N(self._heap[child]).expires:
                break
            self._heap[i] = self._heap[child]
            i = child
        self._heap[i] = item

    cdef object _heap_pop(self):
        """Remove the earliest item; returns its node (the heap's reference moves to it)."""
        cdef PyObject* p = self._heap[0]
        self._heap_len -= 1
        if self._heap_len:
            self._heap[0] = self._heap[self._heap_len]
            self._heap_sift_down(0)
        cdef object node = <object>p       # +1 ...
        Py_DECREF(node)                    # ... and the heap's reference handed over
        return node

    cdef int _heap_compact(self) except -1:
        """Drop the items of dropped nodes so the heap stays O(live entries with a TTL)."""
        cdef list released = []            # freed after the heap is consistent again
        cdef Py_ssize_t i, kept = 0
        cdef PyObject* item
        for i in range(self._heap_len):
            item = self._heap[i]
            if N(item).prev != NULL:
                self._heap[kept] = item
                kept += 1
            else:
                released.append(<object>item)
                Py_DECREF(<object>item)
        self._heap_len = kept
        for i in range(kept // 2 - 1, -1, -1):
            self._heap_sift_down(i)
        self._heap_limit = max(<Py_ssize_t>_HEAP_MIN_LIMIT, 2 * kept)
        return 0

    cdef void _heap_release(self) noexcept:
        cdef PyObject** old = self._heap
        cdef Py_ssize_t i, n = self._heap_len
        self._heap = NULL
        self._heap_len = self._heap_cap = 0
        self._heap_limit = _HEAP_MIN_LIMIT
        for i in range(n):
            Py_DECREF(<object>old[i])
        PyMem_Free(old)

    cdef Py_ssize_t _prune(self) except -1:
        """Drop every expired entry (from the heap's top); returns how many."""
        cdef Py_ssize_t dropped = 0
        cdef double now
        cdef _Node node
        if self._heap_len == 0:
            return 0
        now = self._now()
        while self._heap_len and N(self._heap[0]).expires <= now:
            node = <_Node>self._heap_pop()
            if node.prev != NULL:
                self._drop(node)
                (<Segment>node.seg)._ev_expired += 1
                dropped += 1
        return dropped

    cdef int _drop(self, _Node node) except -1:
        """Unlink ``node``; remove its key if its segment still maps it to ``node``."""
        cdef int unhashable = 0
        cdef object key = <object>node.key
        cdef dict m = (<Segment>node.seg).map
        cdef PyObject* old
        if node.prev != NULL:
            N(node.prev).next = node.next
            N(node.next).prev = node.prev
            node.prev = node.next = NULL
            self._count -= 1
            if self._sized:
                self._bytes -= _size(node)
            Py_DECREF(node)                  # caller still holds a reference
        if tc_lookup(m, key, &unhashable) == <PyObject*>node:
            del m[key]
        if node.expires != 0.0 and node.prev == NULL and node.value != <PyObject*>None:
            # The expiry heap may hold this node until it expires: don't keep the value alive
            # (every reader checks ``prev`` before it reads ``value``).
            old = node.value
            Py_INCREF(None)
            node.value = <PyObject*>None
            Py_DECREF(<object>old)
        return 0

    cdef inline object _lookup(self, Segment seg, object key):
        """Value of a fresh entry (moved to front, counted) or _MISS / _UNHASHABLE."""
        cdef int unhashable = 0
        cdef PyObject* p = tc_lookup(seg.map, key, &unhashable)
        cdef double expires
        if p == NULL or N(p).prev == NULL:
            seg._misses += 1
            return _UNHASHABLE if unhashable else _MISS
        expires = N(p).expires
        if expires != 0.0:
            if self._clock is not None:      # Python clock: may run code, hold a reference
                return self._lookup_slow(seg, N(p))
            if tc_monotonic() >= expires:
                return self._expired(seg, N(p))
        self._move_front_p(p)
        seg._hits += 1
        return <object>N(p).value

    cdef object _lookup_slow(self, Segment seg, _Node node):
        if self._now() >= node.expires:
            return self._expired(seg, node)
        if node.prev == NULL:                # dropped meanwhile
            seg._misses += 1
            return _MISS
        self._move_front(node)
        seg._hits += 1
        return <object>node.value

    cdef object _expired(self, Segment seg, _Node node):
        self._drop(node)
        seg._ev_expired += 1
        seg._misses += 1
        return _MISS

    cdef int _put(self, Segment seg, object key, object value, object ttl) except -1:
        cdef double t = self._ttl if ttl is None else ttl
        cdef double now = 0.0
        cdef Py_ssize_t size = 0
        cdef PyObject* old
        cdef _Node node, existing
        if t == INFINITY:
            t = 0.0
        elif t <= 0.0 and ttl is not None:
            self._discard(seg, key)          # a non-positive TTL stores nothing
            return 0
        if self._sized:
            size = self._sizeof(value)
            if size < 0:
                raise ValueError("getsizeof() returned a negative size")
        if self._maxsize == 0 or (self._sized and size > self._maxbytes):
            self._discard(seg, key)
            return 0
        if t > 0.0:
            now = self._now()
        if self._sized:
            node = _SizedNode.__new__(_SizedNode)
            (<_SizedNode>node).size = size
        else:
            node = _Node.__new__(_Node)
        Py_INCREF(key)
        node.key = <PyObject*>key
        Py_INCREF(value)
        node.value = <PyObject*>value
        node.expires = now + t if t > 0.0 else 0.0
        node.seg = <PyObject*>seg
        existing = <_Node>PyDict_SetDefault(seg.map, key, node)
        if existing is node:
            self._link_front(node)
            if node.expires != 0.0:
                self._heap_push(node)
        elif existing.prev == NULL:          # an orphan left by a race: replace it
            seg.map[key] = node
            self._link_front(node)
            if node.expires != 0.0:
                self._heap_push(node)
        elif node.expires != existing.expires:
            # A linked node's expiry never changes (the heap is ordered by it): replace it.
            self._drop(existing)
            seg.map[key] = node
            self._link_front(node)
            if node.expires != 0.0:
                self._heap_push(node)
        else:
            old = existing.value
            existing.value = node.value
            node.value = old                 # released with ``node``, after relinking
            if self._sized:
                self._bytes += size - _size(existing)
                (<_SizedNode>existing).size = size
            self._move_front(existing)
        seg._sets += 1
        self._evict()
        return 0

    cdef int _evict(self) except -1:
        cdef _Node tail
        cdef Segment sg
        cdef double now = -1.0
        while self._count > self._maxsize or (self._sized and self._bytes > self._maxbytes):
            if self._root.prev == <PyObject*>self._root:
                break
            tail = N(self._root.prev)
            sg = <Segment>tail.seg
            if tail.expires != 0.0:
                if now < 0.0:
                    now = self._now()
                if now >= tail.expires:
                    sg._ev_expired += 1
                else:
                    sg._ev_size += 1
            else:
                sg._ev_size += 1
            self._drop(tail)
        return 0

    cdef bint _discard(self, Segment seg, object key) except -1:
        cdef int unhashable = 0
        cdef PyObject* p = tc_lookup(seg.map, key, &unhashable)
        if unhashable:
            raise TypeError(f"unhashable key type: {type(key).__name__!r}")
        if p == NULL:
            return False
        self._drop(N(p))
        return True

    cdef object _expires_at(self, Segment seg, object key):
        cdef int unhashable = 0
        cdef PyObject* p = tc_lookup(seg.map, key, &unhashable)
        if unhashable:
            raise TypeError(f"unhashable key type: {type(key).__name__!r}")
        if p == NULL or N(p).prev == NULL or N(p).expires == 0.0:
            return None
        return N(p).expires

    cdef bint _contains(self, Segment seg, object key) except -1:
        cdef int unhashable = 0
        cdef PyObject* p = tc_lookup(seg.map, key, &unhashable)
        if unhashable:
            raise TypeError(f"unhashable key type: {type(key).__name__!r}")
        if p == NULL or N(p).prev == NULL:
            return False
        return N(p).expires == 0.0 or self._now() < N(p).expires

    cdef list _keys(self, Segment seg):
        cdef list out = []
        self._prune()
        cdef PyObject* p = self._root.prev
        while p != <PyObject*>self._root:
            if seg is None or N(p).seg == <PyObject*>seg:
                out.append(<object>N(p).key)
            p = N(p).prev
        return out

    cdef int _clear_segment(self, Segment seg) except -1:
        cdef list doomed = []
        cdef PyObject* p = self._root.next
        while p != <PyObject*>self._root:
            if N(p).seg == <PyObject*>seg:
                doomed.append(<object>p)
            p = N(p).next
        for node in doomed:
            self._drop(<_Node>node)
        return 0

    # ------------------------------------------------------------------ public API

    def segment(self, name):
        """The segment called ``name`` (created on first use; lives as long as the store)."""
        seg = self._segments.get(name)
        if seg is None:
            seg = self._segments[name] = self._new_segment(name)
        return seg

    def segments(self):
        """The named segments (not the default one)."""
        return list(self._segments.values())

    def get(self, key, default=None):
        return self._default.get(key, default)

    def put(self, key, value, ttl=None):
        self._put(self._default, key, value, ttl)

    def delete(self, key):
        return self._default.delete(key)

    def expires_at(self, key):
        return self._expires_at(self._default, key)

    def keys(self):
        """Snapshot of the default segment's keys, least recently used first."""
        return self._keys(self._default)

    def delete_where(self, predicate):
        return self._default.delete_where(predicate)

    def clear(self):
        """Drop every entry of every segment (counters are kept)."""
        cdef PyObject* p = self._root.next
        cdef PyObject* nxt
        self._heap_release()
        self._root.prev = self._root.next = <PyObject*>self._root
        self._count = 0
        self._bytes = 0
        self._default.map.clear()
        for seg in list(self._segments.values()):
            (<Segment>seg).map.clear()
        while p != <PyObject*>self._root:
            nxt = N(p).next
            N(p).prev = N(p).next = NULL
            Py_DECREF(<object>p)
            p = nxt

    def expire(self):
        """Drop every expired entry now; returns how many. Optional: memory, not correctness."""
        return self._prune()

    def now(self):
        """The store's clock (seconds, monotonic unless ``clock=`` was given)."""
        return self._now()

    def stats(self):
        """Counters summed over all segments, plus size and bytes (expired entries dropped)."""
        self._prune()
        total = self._default.stats()
        for seg in self._segments.values():
            for k, v in (<Segment>seg).stats().items():
                total[k] += v
        total["size"] = self._count
        total["bytes"] = self._bytes
        return total

    def reset_stats(self):
        self._default.reset_stats()
        for seg in self._segments.values():
            (<Segment>seg).reset_stats()

    @property
    def default_segment(self):
        return self._default

    @property
    def maxsize(self):
        return None if self._maxsize == _UNBOUNDED else self._maxsize

    @property
    def maxbytes(self):
        return self._maxbytes if self._sized else None

    @property
    def ttl(self):
        return None if self._ttl == 0.0 else self._ttl

    @property
    def currbytes(self):
        return self._bytes

    def __len__(self):
        """Live entries of all segments (expired ones are dropped first, like TTLCache)."""
        self._prune()
        return self._count

    def __contains__(self, key):
        return self._contains(self._default, key)

    def __repr__(self):
        return f"<LRU size={self._count} maxsize={self.maxsize} ttl={self.ttl}>"
