"""The kinds of failure, one vocabulary for the service, the worker and the commands.

- ``UNAVAILABLE``: Redis (or a cluster node, mid-failover) cannot take the call now. A retry
  can fix it: the API answers 503, workers retry, a command says which Redis it could not reach.
- ``Backlogged``: the store refuses new events because appends keep failing (a partition's
  journal is full). A retry later can fix it: 503, worded as such, not as an unreachable Redis.
- ``Refused``: a command cannot do what it was asked, for a reason its user can fix (a store
  that refuses a Redis, a loader that refuses a namespace with state, a click log whose columns
  do not match); ``service.cli`` is the one place that turns it into one line on stderr, saying
  what to do, and the exit code ``REFUSED``.
- A task asked to stop (``stop_if_cancelled``): never taken for a failure to retry.
- Anything else, a Redis error included (a script's bug, a wrong type): a bug, which no retry
  fixes. The API answers 500 and logs it with its traceback; a command keeps its traceback.
"""

from __future__ import annotations

import asyncio

from redis.exceptions import (
    AskError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError, AskError,
    ReadOnlyError, OutOfMemoryError, RedisClusterException, ConnectionError, OSError,
    TimeoutError)
"""Errors that say Redis cannot take the call now, as opposed to a call that can never
succeed: retried by workers, 503 from the API, never a dead letter."""


class Backlogged(Exception):
    """New events refused because a partition's appends keep failing (its journal is full)."""

REFUSED = 2
"""Exit code of a command that refused: a bad flag (argparse's own code), a configuration or
an input it cannot work with. Restarting it unchanged would only refuse again."""


class Refused(Exception):
    """A failure the user can fix; the message is one line saying what to do."""


def stop_if_cancelled() -> None:
    """Raise CancelledError when the running task was asked to stop. A background loop that
    outlives Redis failures calls it before each pause: redis-py may turn the cancellation of
    a call it was in into a connection error, or swallow it, and a loop that went on would
    never stop (an app's shutdown waited on it forever)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
