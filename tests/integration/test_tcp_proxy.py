"""The chaos benchmark's outage proxy (benchmarks/tcp_proxy.py) against a real PostgreSQL:
queries pass through it; down, a new connection is refused and an open one is dropped (the
client sees OperationalError); up again on the same port, the same engine works again."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from benchmarks.tcp_proxy import TcpProxy
from tests.integration.registry_support import POSTGRES_URL

pytestmark = pytest.mark.postgres


def test_an_outage_through_the_proxy_refuses_and_drops_then_recovers() -> None:
    url = make_url(POSTGRES_URL)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host=proxy.host, port=proxy.port, query={"connect_timeout": "3"})
        engine = create_engine(proxied, pool_size=1, max_overflow=0)
        try:
            with engine.connect() as open_conn:
                assert open_conn.execute(text("SELECT 1")).scalar() == 1
                proxy.down()
                assert not proxy.is_up
                with pytest.raises(OperationalError):  # the open connection was dropped
                    open_conn.execute(text("SELECT 2"))
            with pytest.raises(OperationalError), engine.connect():  # new ones are refused
                pass
            proxy.up()
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 3")).scalar() == 3
            assert proxy.connections >= 2
        finally:
            engine.dispose()
