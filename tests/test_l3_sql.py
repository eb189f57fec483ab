"""pglast analysis behind the L3 query cache: tables read/written and the refusal list."""

from __future__ import annotations

import pytest

from tiercache.tiers._sql import analyze


@pytest.mark.parametrize(("sql", "tables"), [
    ("SELECT * FROM orders WHERE id = $1", {"orders"}),
    ("SELECT o.id FROM orders o JOIN users u ON u.id = o.user_id", {"orders", "users"}),
    ("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent", {"orders"}),
    ("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders)", {"orders", "users"}),
    ("SELECT * FROM (SELECT * FROM items) s", {"items"}),
    ("SELECT * FROM public.orders", {"orders"}),
    ('SELECT * FROM shop."Orders"', {"shop.Orders"}),
    ("SELECT count(*) FROM a UNION ALL SELECT count(*) FROM b", {"a", "b"}),
])
def test_tables_read(sql: str, tables: set[str]) -> None:
    a = analyze(sql)
    assert (a.kind, a.refusal, set(a.tables)) == ("select", None, tables)


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT now(), id FROM orders", "volatile"),
    ("SELECT random() FROM orders", "volatile"),
    ("SELECT nextval('s') FROM orders", "volatile"),
    ("SELECT current_user, id FROM orders", "volatile"),
    ("SELECT * FROM orders WHERE t < CURRENT_TIMESTAMP", "volatile"),
    ("SELECT * FROM orders FOR UPDATE", "for_update"),
    ("SELECT * FROM orders FOR SHARE", "for_update"),
    ("SELECT * FROM pg_temp.scratch", "temp_table"),
    ("SELECT * FROM pg_catalog.pg_class", "system_catalog"),
    ("SELECT * FROM pg_stat_activity", "system_catalog"),
    ("SELECT * FROM information_schema.tables", "system_catalog"),
    ("BEGIN", "transaction"),
    ("SELECT 1", "no_table"),
    ("UPDATE orders SET v = 1", "write"),
    ("SELEC oops", "unparsable"),
])
def test_refusals(sql: str, reason: str) -> None:
    assert analyze(sql).refusal == reason


@pytest.mark.parametrize(("sql", "tables"), [
    ("UPDATE orders SET v = $1 WHERE id = $2", {"orders"}),
    ("INSERT INTO orders SELECT * FROM staging", {"orders", "staging"}),
    ("DELETE FROM public.orders", {"orders"}),
    ("TRUNCATE a, b", {"a", "b"}),
    ("COPY orders FROM STDIN", {"orders"}),
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", {"orders"}),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {"t", "s"}),
])
def test_tables_written(sql: str, tables: set[str]) -> None:
    a = analyze(sql)
    assert a.kind == "write"
    assert set(a.tables) == tables


def test_ddl_is_other_and_parsed_once() -> None:
    assert analyze("CREATE INDEX ON orders (id)").kind == "other"
    analyze.cache_clear()
    for _ in range(3):
        analyze("SELECT * FROM memo_t")
    assert analyze.cache_info().misses == 1
    assert analyze.cache_info().maxsize == 4096
