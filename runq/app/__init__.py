"""The server side of runq: core (sans-IO), store (SQLite), server (trio I/O)."""
