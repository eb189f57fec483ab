# cython: freethreading_compatible = False, auto_pickle = False
# cython: always_allow_keywords = False
"""Hot path of the consistent-hash ring: key hashing and continuum lookup, in C.

The node bookkeeping (weights, modes, arcs, diffs) lives once, in Python, in
``tiercache.sharding.ring``; this module only does what runs per key. Its pure-Python twin is
``tiercache._fallback._ring`` and both must return identical results.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.stdlib cimport free, malloc

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    PyObject** PySequence_Fast_ITEMS(object)
    long long PyLong_AsLongLongAndOverflow(object, int*) except? -1

cdef extern from "tc_md5.h":
    int TC_MD5_ONE_BLOCK_MAX
    void tc_md5_words(const uint8_t *msg, size_t length, uint32_t out[4]) nogil
    uint32_t tc_md5_a(const uint8_t *msg, size_t length) nogil
    int tc_md5_a_small_int(long long value, uint32_t *hash) nogil
    void tc_md5_x8(const uint8_t *const msgs[8], const size_t lens[8], uint32_t out[8]) nogil

cdef enum:
    INT_BUF = 24   # room for a signed 64-bit decimal


cdef const char *DIGIT_PAIRS = (
    b"00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    b"40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    b"8081828384858687888990919293949596979899"
)


cdef inline Py_ssize_t format_int(long long value, char *tmp) noexcept nogil:
    """Decimal digits of value, right-aligned in tmp[0:INT_BUF]; returns where they start.

    ``str(int)`` without a Python object, two digits at a time, written in place (no copy:
    the MD5 block is loaded straight from here)."""
    cdef Py_ssize_t pos = INT_BUF
    cdef unsigned long long v, pair
    cdef bint negative = value < 0
    v = <unsigned long long>(-(value + 1)) + 1 if negative else <unsigned long long>value
    while v >= 100:
        pair = (v % 100) * 2
        v //= 100
        pos -= 2
        tmp[pos] = DIGIT_PAIRS[pair]
        tmp[pos + 1] = DIGIT_PAIRS[pair + 1]
    if v >= 10:
        pos -= 2
        tmp[pos] = DIGIT_PAIRS[v * 2]
        tmp[pos + 1] = DIGIT_PAIRS[v * 2 + 1]
    else:
        pos -= 1
        tmp[pos] = <char>(48 + v)
    if negative:
        pos -= 1
        tmp[pos] = b'-'
    return pos


cdef object key_view(object key, const uint8_t **data, Py_ssize_t *length, char *intbuf):
    """Point ``data``/``length`` at the canonical bytes of a key.

    str -> UTF-8, bytes -> as is, exact int -> its decimal digits, anything else -> UTF-8 of
    ``str(key)``: exactly what uhashring hashes for str and int keys. Returns the object that
    owns the bytes when one had to be made (the caller keeps it alive), else None.
    """
    cdef int overflow = 0
    cdef long long iv
    cdef Py_ssize_t start
    if PyUnicode_CheckExact(key):
        data[0] = <const uint8_t*>PyUnicode_AsUTF8AndSize(key, length)
        return None
    if PyBytes_CheckExact(key):
        data[0] = <const uint8_t*>PyBytes_AS_STRING(key)
        length[0] = PyBytes_GET_SIZE(key)
        return None
    if PyLong_CheckExact(key):
        iv = PyLong_AsLongLongAndOverflow(key, &overflow)
        if not overflow:
            start = format_int(iv, intbuf)
            data[0] = <const uint8_t*>(intbuf + start)
            length[0] = INT_BUF - start
            return None
    cdef bytes owner
    if isinstance(key, (bytearray, memoryview)):
        owner = bytes(key)
    else:
        owner = str(key).encode("utf-8")
    data[0] = <const uint8_t*>PyBytes_AS_STRING(owner)
    length[0] = PyBytes_GET_SIZE(owner)
    return owner


cdef inline bint small_int_hash(object key, uint32_t *h) noexcept:
    """The hash of an exact int key below 10**15 in magnitude, formatted in registers."""
    cdef int overflow = 0
    cdef long long iv
    if not PyLong_CheckExact(key):
        return False
    iv = PyLong_AsLongLongAndOverflow(key, &overflow)
    return not overflow and tc_md5_a_small_int(iv, h)


cpdef uint32_t hash_key(object key) except? 0xFFFFFFFF:
    """Ketama hash (replica 0) of a key: the first four MD5 bytes, little-endian."""
    cdef uint32_t h
    if small_int_hash(key, &h):
        return h
    cdef const uint8_t *data
    cdef Py_ssize_t length
    cdef char intbuf[INT_BUF]
    cdef object owner = key_view(key, &data, &length, intbuf)
    return tc_md5_a(data, <size_t>length)


def hash_points(str name, Py_ssize_t count, int replicas):
    """The ring points of vnodes ``f"{name}-{w}"`` for w < count, ``replicas`` (1..4) each."""
    if not 1 <= replicas <= 4:
        raise ValueError(f"replicas must be between 1 and 4 (one MD5 digest), got {replicas}")
    cdef list points = []
    cdef uint32_t words[4]
    cdef Py_ssize_t w
    cdef int r
    cdef bytes label
    for w in range(count):
        label = f"{name}-{w}".encode("utf-8")
        tc_md5_words(<const uint8_t*>PyBytes_AS_STRING(label), <size_t>PyBytes_GET_SIZE(label), words)
        for r in range(replicas):
            points.append(words[r])
    return points


cdef class Continuum:
    """Sorted ring points with their owners, and the per-key lookup over them.

    A key belongs to the first point strictly greater than its hash, wrapping to the first
    point (uhashring's ``bisect_right``). A small bucket table indexed by the top bits of the
    hash narrows the binary search to a handful of points.
    """
    cdef uint32_t *_points
    cdef int *_owners
    cdef uint32_t *_buckets
    cdef Py_ssize_t _size
    cdef int _shift
    cdef tuple _names

    def __cinit__(self):
        self._points = NULL
        self._owners = NULL
        self._buckets = NULL
        self._size = 0
        self._shift = 32
        self._names = ()

    def __dealloc__(self):
        free(self._points)
        free(self._owners)
        free(self._buckets)

    def _load(self, points, owners, tuple names):
        """Replace the continuum: ``points`` ascending and unique, ``owners[i]`` indexes names."""
        cdef Py_ssize_t n = len(points), i, b
        cdef int bits = 8
        if len(owners) != n:
            raise ValueError("points and owners differ in length")
        cdef uint32_t *new_points = <uint32_t*>malloc(max(n, 1) * sizeof(uint32_t))
        cdef int *new_owners = <int*>malloc(max(n, 1) * sizeof(int))
        while (1 << bits) < 2 * n and bits < 16:
            bits += 1
        cdef Py_ssize_t nbuckets = 1 << bits
        cdef uint32_t *new_buckets = <uint32_t*>malloc((nbuckets + 1) * sizeof(uint32_t))
        if new_points == NULL or new_owners == NULL or new_buckets == NULL:
            free(new_points); free(new_owners); free(new_buckets)
            raise MemoryError()
        try:
            for i in range(n):
                new_points[i] = points[i]
                new_owners[i] = owners[i]
                if i and new_points[i] <= new_points[i - 1]:
                    raise ValueError("points must be strictly ascending")
                if not 0 <= new_owners[i] < len(names):
                    raise ValueError("owner index out of range")
        except BaseException:
            free(new_points); free(new_owners); free(new_buckets)
            raise
        # buckets[b] = number of points below b << shift, so bucket b spans [buckets[b], buckets[b+1])
        i = 0
        for b in range(nbuckets):
            while i < n and (new_points[i] >> (32 - bits)) < <uint32_t>b:
                i += 1
            new_buckets[b] = <uint32_t>i
        new_buckets[nbuckets] = <uint32_t>n
        free(self._points); free(self._owners); free(self._buckets)
        self._points, self._owners, self._buckets = new_points, new_owners, new_buckets
        self._size = n
        self._shift = 32 - bits
        self._names = names

    cdef inline Py_ssize_t _index(self, uint32_t h) noexcept nogil:
        cdef Py_ssize_t lo = self._buckets[h >> self._shift]
        cdef Py_ssize_t hi = self._buckets[(h >> self._shift) + 1]
        cdef Py_ssize_t mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self._points[mid] <= h:
                lo = mid + 1
            else:
                hi = mid
        return 0 if lo == self._size else lo

    cdef int _check_nonempty(self) except -1:
        if self._size == 0:
            raise LookupError("the hash ring has no nodes (or none with points): add_node() first")
        return 0

    def node_for_hash(self, uint32_t h):
        """Owner of the ring position ``h``."""
        self._check_nonempty()
        return self._names[self._owners[self._index(h)]]

    def get_node(self, key):
        """The node that owns ``key``."""
        cdef const uint8_t *data
        cdef Py_ssize_t length
        cdef char intbuf[INT_BUF]
        cdef uint32_t h
        self._check_nonempty()
        if small_int_hash(key, &h):
            return self._names[self._owners[self._index(h)]]
        cdef object owner = key_view(key, &data, &length, intbuf)
        return self._names[self._owners[self._index(tc_md5_a(data, <size_t>length))]]

    def get_node_many(self, keys):
        """``[get_node(k) for k in keys]`` in one call, hashing eight keys at a time."""
        self._check_nonempty()
        cdef object seq = PySequence_Fast(keys, "get_node_many() needs an iterable of keys")
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), i, j, pending = 0
        cdef PyObject **items = PySequence_Fast_ITEMS(seq)
        cdef list result = PyList_New(n)
        cdef list owners = [None] * 8        # keeps made-up key bytes alive until hashed
        cdef char intbufs[8][INT_BUF]
        cdef const uint8_t *msgs[8]
        cdef size_t lens[8]
        cdef Py_ssize_t slots[8]
        cdef uint32_t hashes[8]
        cdef const uint8_t *data
        cdef Py_ssize_t length
        cdef object owner
        for i in range(n + 1):
            if i < n:
                owner = key_view(<object>items[i], &data, &length, intbufs[pending])
                if length > TC_MD5_ONE_BLOCK_MAX:
                    self._set_owner(result, i, tc_md5_a(data, <size_t>length))
                    continue
                if owner is not None:
                    owners[pending] = owner
                msgs[pending] = data
                lens[pending] = <size_t>length
                slots[pending] = i
                pending += 1
                if pending < 8:
                    continue
            elif pending == 0:
                break
            for j in range(pending, 8):   # idle lanes hash a copy of lane 0
                msgs[j] = msgs[0]
                lens[j] = lens[0]
            tc_md5_x8(msgs, lens, hashes)
            for j in range(pending):
                self._set_owner(result, slots[j], hashes[j])
                owners[j] = None
            pending = 0
        return result

    cdef inline void _set_owner(self, list result, Py_ssize_t slot, uint32_t h) noexcept:
        cdef object name = self._names[self._owners[self._index(h)]]
        Py_INCREF(name)
        PyList_SET_ITEM(result, slot, name)

    @property
    def size(self):
        """Number of points on the ring."""
        return self._size
