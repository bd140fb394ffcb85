"""trio I/O: TCP listener, sessions, timers, and the wiring of core and store."""

from __future__ import annotations

from .server import VERSION, Clock, ConfigError, Server, ServerConfig

__all__ = ["Server", "ServerConfig", "Clock", "ConfigError", "VERSION"]
