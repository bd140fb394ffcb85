"""How often a login may fail: per user name and per client address, over a sliding window (a pure rule).

``LoginLimiter`` counts failed logins; ``wait(user, address, now)`` says how long the next attempt must wait
(0: it may go on). A success clears the user's count (not the address's: one address trying many names is
what the address limit is for). Time is passed in (the server's clock, a fake one in tests); memory is
bounded (``max_keys``: the oldest keys are dropped first).
"""

from __future__ import annotations

from collections import OrderedDict, deque

__all__ = ["LoginLimiter"]


class LoginLimiter:
    """Failed logins by user and by address (see the module docstring).

    Args:
        per_user: failures of one user name allowed within ``window`` seconds.
        per_address: failures from one address allowed within ``window``.
        window: seconds a failure counts.
        max_keys: user names and addresses remembered at most.
    """

    def __init__(self, per_user: int = 5, per_address: int = 20, window: float = 300.0,
                 max_keys: int = 10_000) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self.max_keys = max_keys
        self._fails: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        d = self._fails.get(key)
        if d is None:
            return None
        while d and d[0] <= now - self.window:
            d.popleft()
        if not d:
            del self._fails[key]
            return None
        return d

    def wait(self, user: str, address: str, now: float) -> float:
        """Seconds until a login of ``user`` from ``address`` may be tried (0: now)."""
        out = 0.0
        for key, limit in ((("u", user), self.per_user), (("a", address), self.per_address)):
            d = self._recent(key, now)
            if d is not None and len(d) >= limit:
                out = max(out, d[len(d) - limit] + self.window - now)
        return out

    def failed(self, user: str, address: str, now: float) -> None:
        """A login of ``user`` from ``address`` failed at ``now``."""
        for key in (("u", user), ("a", address)):
            d = self._fails.get(key)
            if d is None:
                d = self._fails[key] = deque(maxlen=max(self.per_user, self.per_address))
            else:
                self._fails.move_to_end(key)
            d.append(now)
        while len(self._fails) > self.max_keys:
            self._fails.popitem(last=False)

    def succeeded(self, user: str) -> None:
        """``user`` logged in: its failures are forgotten."""
        self._fails.pop(("u", user), None)
