"""Pure-Python hit-path wrappers for the ``_lru`` twin (re-exported by ``_fallback._lru``).

Split out only to keep modules short; see ``ext/_lru_cached.pxi`` for the C version.
"""

from __future__ import annotations

import asyncio.coroutines
import functools
import inspect
import types
from collections.abc import Callable, Coroutine, Generator, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

if TYPE_CHECKING:
    from tiercache._fallback._lru import LRU, Segment

__all__ = ["KWMARK", "AsyncCachedFunction", "CachedFunction", "Ready", "make_key", "ready"]

MissHandler = Callable[[Hashable | None, tuple[Any, ...], dict[str, Any]], Any]


class _KwMark:
    """Separates positional args from sorted kwargs items inside an L1 key."""

    def __repr__(self) -> str:
        return "<kwargs>"

    def __reduce__(self) -> str:
        return "KWMARK"


KWMARK: Final = _KwMark()


_FAST_TYPES: Final = (int, str)


def make_key(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any] | None = None) -> Hashable:
    """The L1 key of a call, the same as functools.lru_cache builds.

    One positional int/str argument -> the argument itself (saves hashing and comparing a
    tuple on every hit); other positional-only calls -> the ``args`` tuple; with keywords
    -> args + KWMARK + the keyword items sorted by name.
    """
    args = tuple(args)
    if not kwargs:
        if len(args) == 1 and type(args[0]) in _FAST_TYPES:
            return args[0]  # type: ignore[no-any-return]
        return args
    return (*args, KWMARK, *sorted(kwargs.items()))


class Ready:
    """An awaitable that is already done: ``await`` returns the value with no loop trip.

    ``send``/``throw``/``close`` plus the ``Coroutine`` registration make it usable with
    ``asyncio.create_task``/``gather`` too.
    """

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self  # type: ignore[return-value]

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> NoReturn:
        raise StopIteration(self._value)

    def send(self, arg: Any) -> NoReturn:
        raise StopIteration(self._value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> NoReturn:
        raise typ if val is None else val

    def close(self) -> None:
        pass

    @property
    def value(self) -> Any:
        return self._value


Coroutine.register(Ready)


def ready(value: Any) -> Ready:
    """A finished awaitable holding ``value``."""
    return Ready(value)


class _CachedBase:
    store: LRU | None
    segment: Segment | None

    def __init__(
        self, func: Callable[..., Any], store: LRU | Segment | None, miss_handler: MissHandler
    ) -> None:
        if not callable(func) or not callable(miss_handler):
            raise TypeError("func and miss_handler must be callable")
        default = getattr(store, "default_segment", None)  # set on an LRU, not a Segment
        if store is None:
            self.store = self.segment = None
        elif default is not None:
            self.store, self.segment = cast("LRU", store), cast("Segment", default)
        else:
            self.segment = cast("Segment", store)
            self.store = self.segment.store
        self.miss_handler = miss_handler
        functools.update_wrapper(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def l1_key(self, *args: Any, **kwargs: Any) -> Hashable:
        """The L1 key this call would use (for invalidation by arguments)."""
        return make_key(args, kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # Behave like a function when used on a class: bind the instance as first arg.
        return self if instance is None else types.MethodType(self, instance)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, '__qualname__', '?')}>"

    def _lookup(self, key: Hashable) -> tuple[bool, Any, Hashable | None]:
        """(hit, value, key-for-the-handler)."""
        seg = self.segment
        if seg is not None:
            try:
                entry = seg._fresh(key)
            except TypeError:
                return False, None, None
            if entry is not None:
                return True, entry.value, key
        return False, None, key


class CachedFunction(_CachedBase):
    """Sync hit path: L1 hit -> value; otherwise ``miss_handler(key, args, kwargs)``.

    ``key`` is None when the arguments are unhashable: the core then skips L1 and uses
    the L2 string key only.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hit, value, key = self._lookup(make_key(args, kwargs))
        return value if hit else self.miss_handler(key, args, kwargs)


def _mark_coroutine_function(wrapper: Any, func: Any) -> None:
    # Keep inspect/asyncio.iscoroutinefunction() true: frameworks decide how to call a
    # handler with it. 3.12+ reads the marker; 3.11 wants a function-like object with a
    # coroutine __code__, or asyncio's _is_coroutine.
    mark = getattr(inspect, "_is_coroutine_mark", None)
    if mark is not None:
        wrapper._is_coroutine_marker = mark
    wrapper._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)
    for name in ("__code__", "__defaults__", "__kwdefaults__"):
        if hasattr(func, name):
            setattr(wrapper, name, getattr(func, name))


class AsyncCachedFunction(_CachedBase):
    """Async hit path: L1 hit -> a :class:`Ready`; otherwise the handler's coroutine."""

    def __init__(
        self, func: Callable[..., Any], store: LRU | Segment | None, miss_handler: MissHandler
    ) -> None:
        super().__init__(func, store, miss_handler)
        _mark_coroutine_function(self, func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        hit, value, key = self._lookup(make_key(args, kwargs))
        return Ready(value) if hit else self.miss_handler(key, args, kwargs)
