"""trio I/O: the server (core + store wiring, timers, operations) and its TCP protocol frontend."""

from __future__ import annotations

from .config import Clock, ConfigError, ServerConfig, is_loopback
from .server import VERSION, Server, ServerStats, Subscriber

__all__ = ["VERSION", "Clock", "ConfigError", "Server", "ServerConfig", "ServerStats", "Subscriber", "is_loopback"]
