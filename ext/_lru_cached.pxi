# The @cached hit path; included by _lru.pyx so a hit never leaves C.

import asyncio.coroutines as _aio_coroutines
import functools as _functools
import inspect as _inspect
from collections.abc import Coroutine as _Coroutine
from types import MethodType as _MethodType


@cython.final
cdef class _KwMark:
    """Separates positional args from sorted kwargs items inside an L1 key."""
    def __repr__(self):
        return "<kwargs>"
    def __reduce__(self):
        return "KWMARK"


KWMARK = _KwMark()


cdef inline object _make_key(tuple args, dict kwargs):
    cdef object first
    if not kwargs:
        if PyTuple_GET_SIZE(args) == 1:
            first = args[0]
            if PyLong_CheckExact(first) or PyUnicode_CheckExact(first):
                return first
        return args
    return args + (KWMARK,) + tuple(sorted(kwargs.items()))


def make_key(args, kwargs=None):
    """The L1 key of a call, the same as functools.lru_cache builds.

    One positional int/str argument -> the argument itself (saves hashing and comparing a
    tuple on every hit); other positional-only calls -> the ``args`` tuple; with keywords
    -> args + KWMARK + the keyword items sorted by name.
    """
    return _make_key(tuple(args), kwargs)


@cython.final
@cython.freelist(32)
@cython.auto_pickle(False)
cdef class Ready:
    """An awaitable that is already done: ``await`` returns the value with no loop trip.

    ``am_send`` (patched in below) hands the value straight to the awaiting frame; the
    ``send``/``throw``/``close`` methods and the ``Coroutine`` registration make it usable
    with ``asyncio.create_task``/``gather`` as well.
    """
    cdef object _value

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        raise StopIteration(self._value)

    def send(self, arg):
        raise StopIteration(self._value)

    def throw(self, typ, val=None, tb=None):
        if val is None:
            raise typ
        raise val

    def close(self):
        pass

    @property
    def value(self):
        return self._value


cdef PySendResult _ready_send(PyObject* self, PyObject* arg, PyObject** result) noexcept:
    cdef PyObject* v = <PyObject*>(<Ready>self)._value
    Py_INCREF(<object>v)
    result[0] = v
    return PYGEN_RETURN


(<_TypeWithAsync*>Ready).tp_as_async.am_send = _ready_send
PyType_Modified(<PyTypeObject*>Ready)
_Coroutine.register(Ready)


def ready(value):
    """A finished awaitable holding ``value``."""
    cdef Ready r = Ready.__new__(Ready)
    r._value = value
    return r


@cython.auto_pickle(False)
cdef class _CachedBase:
    cdef readonly LRU store
    cdef readonly Segment segment
    cdef readonly object miss_handler
    cdef object __wrapped__
    cdef dict __dict__
    cdef object __weakref__

    def __init__(self, func, store, miss_handler):
        if not callable(func) or not callable(miss_handler):
            raise TypeError("func and miss_handler must be callable")
        if isinstance(store, Segment):
            self.segment = store
            self.store = (<Segment>store).store
        elif store is not None:
            self.store = store
            self.segment = (<LRU>store)._default
        self.miss_handler = miss_handler
        _functools.update_wrapper(self, func)

    def l1_key(self, *args, **kwargs):
        """The L1 key this call would use (for invalidation by arguments)."""
        return _make_key(args, kwargs)

    def __get__(self, instance, owner):
        # Behave like a function when used on a class: bind the instance as first arg.
        if instance is None:
            return self
        return _MethodType(self, instance)

    def __repr__(self):
        return f"<{type(self).__name__} {getattr(self, '__qualname__', '?')}>"


@cython.final
cdef class CachedFunction(_CachedBase):
    """Sync hit path: L1 hit -> value; otherwise ``miss_handler(key, args, kwargs)``.

    ``key`` is None when the arguments are unhashable: the core then skips L1 and
    uses the L2 string key only.
    """

    def __call__(self, *args, **kwargs):
        # Real calls go through _sync_call (installed as tp_call below); this stays for
        # ``obj.__call__`` lookups and behaves the same.
        return _sync_call(self, args, <PyObject*>kwargs)


def _mark_coroutine_function(wrapper, func):
    # Keep inspect/asyncio.iscoroutinefunction() true: frameworks (FastAPI, Starlette...)
    # decide how to call a handler with it. 3.12+ reads the marker; 3.11 wants a
    # function-like object with a coroutine __code__, or asyncio's _is_coroutine.
    mark = getattr(_inspect, "_is_coroutine_mark", None)
    if mark is not None:
        wrapper._is_coroutine_marker = mark
    wrapper._is_coroutine = getattr(_aio_coroutines, "_is_coroutine", None)
    for name in ("__code__", "__defaults__", "__kwdefaults__"):
        if hasattr(func, name):
            setattr(wrapper, name, getattr(func, name))


@cython.final
cdef class AsyncCachedFunction(_CachedBase):
    """Async hit path: L1 hit -> a :class:`Ready`; otherwise the handler's coroutine."""

    def __init__(self, func, store, miss_handler):
        _CachedBase.__init__(self, func, store, miss_handler)
        _mark_coroutine_function(self, func)

    def __call__(self, *args, **kwargs):
        return _async_call(self, args, <PyObject*>kwargs)


# tp_call taking (args tuple, kwds dict-or-NULL) directly: Cython's own __call__ wrapper
# allocates an empty kwargs dict on every call, which is most of a hit's cost.

cdef object _sync_call(object self, object args, PyObject* kwds):
    cdef _CachedBase w = <_CachedBase>self
    cdef object key
    cdef object value
    if kwds != NULL and PyDict_GET_SIZE(kwds) != 0:
        key = _make_key(<tuple>args, <dict>kwds)
    else:
        key = _make_key(<tuple>args, None)
    if w.store is not None:
        value = w.store._lookup(w.segment, key)
        if value is not _MISS:
            if value is not _UNHASHABLE:
                return value
            key = None
    return w.miss_handler(key, args, {} if kwds == NULL else dict(<dict>kwds))


cdef object _async_call(object self, object args, PyObject* kwds):
    cdef _CachedBase w = <_CachedBase>self
    cdef object key
    cdef object value
    cdef Ready r
    if kwds != NULL and PyDict_GET_SIZE(kwds) != 0:
        key = _make_key(<tuple>args, <dict>kwds)
    else:
        key = _make_key(<tuple>args, None)
    if w.store is not None:
        value = w.store._lookup(w.segment, key)
        if value is not _MISS:
            if value is not _UNHASHABLE:
                r = Ready.__new__(Ready)
                r._value = value
                return r
            key = None
    return w.miss_handler(key, args, {} if kwds == NULL else dict(<dict>kwds))


(<_TypeWithCall*>CachedFunction).tp_call = <ternaryfunc>_sync_call
PyType_Modified(<PyTypeObject*>CachedFunction)
(<_TypeWithCall*>AsyncCachedFunction).tp_call = <ternaryfunc>_async_call
PyType_Modified(<PyTypeObject*>AsyncCachedFunction)

