"""``tiercache bench``: suites that time tiercache against the libraries people use today.

A suite is a module in :mod:`tiercache.bench.suites` with ``NAME``, ``DESCRIPTION`` and
``async def run(ctx: BenchContext) -> list[Row]``. Each :class:`Row` is one measurement: a
name, a one-line human summary, the target it is judged against and whether it met it,
plus any numbers worth keeping in ``--json`` output. Suites check the results they time
(same placement, same values) before timing, so a fast wrong answer fails loudly.
"""

from tiercache.bench.base import BenchContext, Row, SuiteError

__all__ = ["BenchContext", "Row", "SuiteError"]
