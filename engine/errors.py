"""The engine's exception tree: every error the engine raises on purpose is one of these.

::

    EngineError
    ├── ConfigError            bad config: names the file and the key
    ├── DataError              bad dataset line: names the file and the line number
    ├── CheckpointError        unreadable, incompatible or half-written checkpoint
    ├── RunDirError            a run directory's file is unsafe to write or unreadable
    ├── ClientClosedError      a client or resource used after close
    ├── RewardError            a reward function or judge failed for one rollout
    ├── SandboxError           the code sandbox failed (not the code): a recorded failure
    │   └── SandboxUnavailable    it cannot isolate code here, so it refuses to run any
    ├── OutputParseError       model output that does not fit a signature or verdict format
    └── EndpointError          a request to a model endpoint failed (status, attempt, endpoint)
        ├── TransportError     connection refused/reset, server disconnected
        ├── EndpointTimeout    the read or connect timeout passed
        ├── DeadlineExceeded   the per-request deadline (queueing + retries) passed
        ├── RateLimitError     HTTP 429 (after retries ran out)
        ├── ServerError        HTTP 5xx / 529
        ├── ConflictError      HTTP 409 / 425: a transient conflict, retried
        ├── RequestRejected    HTTP 4xx other than 429: never retried
        │   └── AuthenticationError   401 / 403
        ├── ResponseError      malformed body, or HTTP 200 carrying an error
        └── BudgetSpent        ``limits.max_cost_usd`` is spent: refused before sending

Provider errors are wrapped at the client boundary; nothing from aiohttp leaks upward.
Messages never contain an API key: the client redacts keys before building them.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = (
    "AuthenticationError",
    "BudgetSpent",
    "CheckpointError",
    "ClientClosedError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "DeadlineExceeded",
    "EndpointError",
    "EndpointTimeout",
    "EngineError",
    "OutputParseError",
    "RateLimitError",
    "RequestRejected",
    "ResponseError",
    "RewardError",
    "RunDirError",
    "SandboxError",
    "SandboxUnavailable",
    "ServerError",
    "TransportError",
    "first_engine_error",
    "first_error",
)


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A config file or override is invalid; the message names the file and the key."""

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        where = ", ".join(p for p in (path, f"key {key!r}" if key else None) if p)
        super().__init__(f"{where}: {message}" if where else message)


class DataError(EngineError):
    """A dataset line is malformed; the message names the file and the 1-based line number."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path or '<data>'}:{line}" if line is not None else (path or "")
        super().__init__(f"{where}: {message}" if where else message)


class CheckpointError(EngineError):
    """A checkpoint cannot be written or loaded (missing, corrupt, wrong version, incompatible)."""


class RunDirError(EngineError):
    """A run directory cannot be written or read safely: a symlink or a non-regular file
    where the engine writes, or a file of the run that is missing, truncated or malformed."""


class ClientClosedError(EngineError):
    """A client or other resource was used after it was closed."""


class RewardError(EngineError):
    """A reward function or judge failed for one rollout; the rollout is masked, not zeroed."""


class SandboxError(EngineError):
    """The code sandbox failed (could not start, its harness broke): a failure of that rollout
    or episode, never the code's score."""


class SandboxUnavailable(SandboxError):
    """The sandbox cannot isolate code on this platform (no user or network namespace, no way
    to cap processes), so it refuses to run it; the message says why."""


class OutputParseError(EngineError):
    """Model output could not be parsed into the expected fields; keeps the raw text."""

    def __init__(self, message: str, *, raw: str = "") -> None:
        self.raw = raw
        super().__init__(message)


class EndpointError(EngineError):
    """A request to a model endpoint failed.

    Attributes:
        status: HTTP status, or None when no response arrived.
        attempt: how many attempts were made (1-based).
        endpoint: the URL path or name of the endpoint (never contains a key).
        retryable: whether the client's retry policy considered it retryable.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        attempt: int = 1,
        endpoint: str = "",
        retryable: bool | None = None,
    ) -> None:
        self.status = status
        self.attempt = attempt
        self.endpoint = endpoint
        if retryable is not None:
            self.retryable = retryable
        parts = [p for p in (endpoint, f"status {status}" if status is not None else None) if p]
        parts.append(f"attempt {attempt}")
        super().__init__(f"{message} ({', '.join(parts)})")

    @property
    def error_class(self) -> str:
        """Short class name used in events and metrics (e.g. ``rate_limit``)."""
        return _ERROR_CLASS.get(type(self), "endpoint")


class TransportError(EndpointError):
    """The connection failed: refused, reset, or the server disconnected."""

    retryable = True


class EndpointTimeout(EndpointError):
    """The connect or read timeout passed."""

    retryable = True


class DeadlineExceeded(EndpointError):
    """The per-request deadline, covering queueing and retries, passed."""


class RateLimitError(EndpointError):
    """HTTP 429 and retries ran out."""

    retryable = True


class ServerError(EndpointError):
    """HTTP 5xx (or 529 overloaded)."""

    retryable = True


class ConflictError(EndpointError):
    """HTTP 409 (conflict) or 425 (too early): the server asks for the same request again later."""

    retryable = True


class RequestRejected(EndpointError):
    """HTTP 4xx other than 429 and the retryable 408/409/425: the request itself is wrong."""


class AuthenticationError(RequestRejected):
    """HTTP 401 or 403: the key is missing, wrong or lacks permission."""


class ResponseError(EndpointError):
    """The body is malformed, or an HTTP 200 carries an error object."""


class BudgetSpent(EndpointError):
    """The run's spend budget (``limits.max_cost_usd``) is spent: the request was refused
    before it was sent, so it cost nothing. Never retried."""


_ERROR_CLASS: dict[type, str] = {
    TransportError: "transport",
    EndpointTimeout: "timeout",
    DeadlineExceeded: "deadline",
    RateLimitError: "rate_limit",
    ServerError: "server",
    ConflictError: "conflict",
    RequestRejected: "rejected",
    AuthenticationError: "auth",
    ResponseError: "response",
    BudgetSpent: "budget",
}


E = TypeVar("E", bound=BaseException)


def first_error(exc: BaseException, cls: type[E]) -> E | None:
    """The first ``cls`` instance in ``exc`` or, recursively, in its exception groups."""
    if isinstance(exc, cls):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            found = first_error(sub, cls)
            if found is not None:
                return found
    return None


def first_engine_error(exc: BaseException) -> EngineError | None:
    """The first :class:`EngineError` in ``exc`` or, recursively, in its exception groups.

    Task groups wrap errors in ``ExceptionGroup``; callers that report one readable line use
    this to find the error worth reporting.
    """
    return first_error(exc, EngineError)
