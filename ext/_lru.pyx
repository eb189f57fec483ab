# cython: language_level=3, freethreading_compatible=False, auto_pickle=False
"""The L1 store (LRU + per-entry TTL) and the @cached hit path, in C.

Layout: each segment (one per cached function) has a dict mapping a key to a small non-GC
node object (64 bytes: key, value, prev, next, segment and expiry as raw C fields); all nodes
form one circular doubly linked list around a sentinel, most recently used first. The dict and the list each own one reference to a node, so a
pointer taken from either stays valid even if a key's Python-level ``__eq__`` lets another
thread mutate the store mid-operation (then the worst case is a stale entry, never a crash).

Expiry is checked on access and at eviction (no background thread); ``len()``/``keys()``
first drop what expired, found through a min-heap of the TTL'd entries (never on a hit). The clock is
``clock_gettime(CLOCK_MONOTONIC_COARSE)`` read from C, and only for entries that have a TTL;
``clock=`` swaps in a Python callable for tests. Counters are plain C integers.
Values are held through raw pointers, so the GC does not see them: a cycle running
through a cached value and back to the store is not collected (don't cache the cache).

Twin: tiercache/_fallback/_lru.py (same API, cachetools-based).
"""

cimport cython
from cpython.object cimport PyObject, PyTypeObject
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.long cimport PyLong_CheckExact
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.tuple cimport PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact
from libc.math cimport INFINITY

cdef extern from *:
    """
    #include <time.h>
    #if defined(_WIN32)
    #include <windows.h>
    static double tc_monotonic(void) { return (double)GetTickCount64() / 1000.0; }
    #else
    static double tc_monotonic(void) {
        struct timespec ts;
    #ifdef CLOCK_MONOTONIC_COARSE
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    #else
        clock_gettime(CLOCK_MONOTONIC, &ts);
    #endif
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    }
    #endif
    /* Borrowed lookup; an unhashable key (TypeError) is reported via *unhashable. */
    static PyObject* tc_lookup(PyObject* d, PyObject* key, int* unhashable) {
        PyObject* r = PyDict_GetItemWithError(d, key);
        if (r == NULL && PyErr_Occurred() && PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            *unhashable = 1;
        }
        return r;
    }
    """
    double tc_monotonic() nogil
    PyObject* tc_lookup(object d, object key, int* unhashable) except? NULL

cdef extern from "Python.h":
    ctypedef enum PySendResult:
        PYGEN_RETURN
        PYGEN_ERROR
        PYGEN_NEXT
    ctypedef PySendResult (*sendfunc)(PyObject*, PyObject*, PyObject**)
    ctypedef struct PyAsyncMethods:
        sendfunc am_send
    ctypedef struct _TypeWithAsync "PyTypeObject":
        PyAsyncMethods* tp_as_async
    ctypedef PyObject* (*ternaryfunc)(PyObject*, PyObject*, PyObject*)
    ctypedef struct _TypeWithCall "PyTypeObject":
        ternaryfunc tp_call
    Py_ssize_t PyDict_GET_SIZE(PyObject*)
    PyObject* PyDict_SetDefault(object d, object key, object default) except NULL
    void PyType_Modified(PyTypeObject*)

include "_lru_store.pxi"
include "_lru_cached.pxi"
