"""Console sessions and the lock-out after repeated failed logins, in the node's memory.

A session is a random token (256 bits) in an HttpOnly, SameSite=Strict cookie (Secure under HTTPS), with
its own CSRF token that every form carries. Sessions end at logout, after ``idle_timeout_s`` without a
request, and when the node restarts (people log in again; nothing is lost).

Lock-out: after ``MAX_FAILURES`` failed logins within ``WINDOW_S`` for one user name, or from one client
address, further attempts are refused for ``LOCKOUT_S``, even with the right password.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from sct_node.console.users import User

__all__ = ["LOCKOUT_S", "MAX_FAILURES", "WINDOW_S", "LoginGuard", "Session", "SessionStore"]

MAX_FAILURES = 5
WINDOW_S = 15 * 60.0
LOCKOUT_S = 15 * 60.0


@dataclass
class Session:
    user: User
    csrf: str
    last_seen: float


class SessionStore:
    """token -> Session, thread-safe (uvicorn's event loop and the tests may both touch it)."""

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[token] = Session(user, secrets.token_urlsafe(32), time.monotonic())
        return token

    def get(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its idle time restarts); None when there is none or it timed out."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_seen > self.idle_timeout_s:
                del self._sessions[token]
                return None
            session.last_seen = now
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(token or "", None)


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class LoginGuard:
    """Counts failed logins per user name and per client address; locks either out after too many."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 lockout_s: float = LOCKOUT_S) -> None:
        self.max_failures, self.window_s, self.lockout_s = max_failures, window_s, lockout_s
        self._failures: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def locked(self, name: str, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(self._failures.get(key, _Failures()).locked_until > now for key in self._keys(name, client))

    def failed(self, name: str, client: str) -> bool:
        """Record a failed login; True when it locked the name or the client out."""
        now = time.monotonic()
        locked = False
        with self._lock:
            for key in self._keys(name, client):
                record = self._failures.setdefault(key, _Failures())
                record.times = [t for t in record.times if now - t < self.window_s] + [now]
                if len(record.times) >= self.max_failures:
                    record.locked_until, record.times = now + self.lockout_s, []
                    locked = True
            if len(self._failures) > 10_000:  # bounded whatever a client sends
                self._failures = {k: v for k, v in self._failures.items() if v.locked_until > now or v.times}
        return locked

    def succeeded(self, name: str, client: str) -> None:
        """A login succeeded: the name's failures are forgiven (the client's are not, or one valid account
        would reset the count of an address trying other names)."""
        with self._lock:
            self._failures.pop(self._keys(name, client)[0], None)

    @staticmethod
    def _keys(name: str, client: str) -> tuple[str, str]:
        return f"user:{name[:64]}", f"client:{client}"
