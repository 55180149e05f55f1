"""Pick the controller's store from its settings: SQLite in the data directory (one machine, the
default) or PostgreSQL (`--store postgresql://USER@HOST:PORT/DB`, for replicas).

The PostgreSQL password never travels in the address (which is logged): it comes from
`--store-password-file`, EDGEFLEET_CONTROLLER_STORE_PASSWORD, or libpq's own PGPASSWORD and
PGPASSFILE (~/.pgpass).
"""

from __future__ import annotations

from fleet.controller.settings import ControllerSettings
from fleet.controller.store.protocol import Store
from fleet.controller.store.sqlite import SqliteStore

SQLITE = "sqlite"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(address: str) -> bool:
    return address.startswith(POSTGRES_SCHEMES)


def open_store(settings: ControllerSettings) -> Store:
    """Open (and migrate) the configured store. Blocking: call it off the event loop."""
    if not is_postgres(settings.store):
        return SqliteStore(settings.data_dir / "controller.db", settings.store_busy_timeout_s)
    from fleet.controller.store.postgres import PostgresStore

    password = None
    if settings.store_password_file is not None:
        password = settings.store_password_file.read_text().strip()
    elif settings.store_password is not None:
        password = settings.store_password.get_secret_value()
    return PostgresStore(settings.store, password=password)


def describe(settings: ControllerSettings) -> str:
    """The store for a log line (never a password: the address holds none)."""
    if is_postgres(settings.store):
        return settings.store
    return str(settings.data_dir / "controller.db")
