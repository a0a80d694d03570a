"""Alembic environment for the registry.

Programmatic use (the service, on start): ``database.migrate(engine)`` passes a live
connection in ``config.attributes["connection"]``. Command-line use:
``alembic -c services/registry/alembic.ini upgrade head`` takes the URL from the
registry settings (``REGISTRY_DATABASE_URL`` / ``DATABASE_URL``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

from services.registry import (  # noqa: F401  (they register the tables on the metadata)
    rollout_tables,
    tables,
)

config = context.config
target_metadata = SQLModel.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from services.registry.settings import RegistrySettings

    return RegistrySettings(dev_mode=True).database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
