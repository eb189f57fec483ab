"""OpenTelemetry export: observable instruments fed by one samples() per collection cycle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from tiercache.metrics.registry import samples
from tiercache.metrics.samples import FAMILIES, Samples

__all__ = ["instrument_otel"]


class _CachedSamples:
    """One samples() per collection cycle, shared by every instrument's callback."""

    def __init__(self, max_age: float = 0.5) -> None:
        self.max_age = max_age
        self._at = -1e9
        self._value: Samples = {}
        self._lock = threading.Lock()

    def get(self) -> Samples:
        with self._lock:
            now = time.monotonic()
            if now - self._at > self.max_age:
                self._value = samples()
                self._at = now
            return self._value


def instrument_otel(meter_provider: Any = None) -> list[Any]:
    """Create OpenTelemetry observable instruments for every family; returns them.

    Needs ``opentelemetry-api`` (the ``otel`` extra); ``meter_provider`` defaults to the
    global one. Names use dots (``tiercache.requests``), units follow OTel conventions.
    """
    try:
        from opentelemetry import metrics as otel
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("instrument_otel() needs opentelemetry-api: pip install "
                           "'tiercache[otel]'") from exc
    from tiercache import __version__

    provider = meter_provider if meter_provider is not None else otel.get_meter_provider()
    meter = provider.get_meter("tiercache", __version__)
    cache = _CachedSamples()
    instruments: list[Any] = []
    for name, (kind, doc, labels) in FAMILIES.items():
        base = name.removesuffix("_total").replace("_", ".")
        if kind == "histogram":
            base = base.removesuffix(".seconds")
            for part in ("sum", "count"):
                unit = "s" if part == "sum" else "1"
                instruments.append(meter.create_observable_counter(
                    f"{base}.{part}", callbacks=[_callback(cache, name, labels, otel, part)],
                    unit=unit, description=f"{doc} ({part})"))
        elif kind == "counter":
            instruments.append(meter.create_observable_counter(
                base, callbacks=[_callback(cache, name, labels, otel, None)], description=doc))
        else:
            instruments.append(meter.create_observable_gauge(
                base, callbacks=[_callback(cache, name, labels, otel, None)], description=doc))
    return instruments


def _callback(cache: _CachedSamples, name: str, labels: list[str], otel: Any,
              part: str | None) -> Callable[[Any], Iterable[Any]]:
    def observe(options: Any) -> Iterable[Any]:
        series = cache.get().get(name, {})
        out = []
        for values, value in series.items():
            attributes = dict(zip(labels, values, strict=True))
            if part is not None:
                value = value[part]
            out.append(otel.Observation(value, attributes))
        return out

    return observe
