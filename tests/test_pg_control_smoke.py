import psycopg
import pytest


def test_stoppable_pg_really_stops_and_starts(stoppable_pg):
    with psycopg.connect(stoppable_pg.url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    stoppable_pg.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(stoppable_pg.url, connect_timeout=2)
    stoppable_pg.start()
    with psycopg.connect(stoppable_pg.url) as conn:
        assert conn.execute("select count(*) from telemetry_readings").fetchone() == (0,)
