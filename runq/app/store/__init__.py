"""SQLite WAL persistence: schema and migrations, group-commit writer, reads."""

from __future__ import annotations

from .schema import SCHEMA_VERSION, SchemaTooNew, migrate
from .sqlite import Batch, Store, StoreError, StoreInUse, StoreStats

__all__ = ["SCHEMA_VERSION", "Batch", "SchemaTooNew", "Store", "StoreError", "StoreInUse", "StoreStats", "migrate"]
