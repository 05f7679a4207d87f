"""One partition as a worker holds it: what its loop carries from one batch to the next."""

from __future__ import annotations

import asyncio

from workers.entries import Entry


class Partition:
    """The state of one partition in this worker (one object per partition, kept across the
    worker's holds of it). Only the loop of the current hold (``task``) reads the partition;
    the lease code clears ``task`` before cancelling it, so a loop whose cancellation was lost
    sees that it is no longer the partition's and stops."""

    __slots__ = ("attempting", "cut_at", "cut_at_inflight", "p", "prefetched",
                 "redeliveries_explained", "task")

    def __init__(self, p: int) -> None:
        self.p = p
        self.task: asyncio.Task[None] | None = None
        """The loop of the current hold; None while the partition is not held."""
        self.prefetched: list[Entry] | None = None
        """The next batch, read in the same round trip as the last commit."""
        self.cut_at: str | None = None
        """Where a slot's part of a batch ends (cluster): the next try ends there."""
        self.cut_at_inflight = False
        """The last batch was cut at the in-flight mark: read the backlog next."""
        self.attempting: str | None = None
        """The redelivered entry being applied alone (its attempt recorded)."""
        self.redeliveries_explained = 0
        """Redeliveries since the last success that an outage or a conflict explains (not a
        crash the entry might cause: those count toward dead-lettering)."""

    def begin_hold(self) -> None:
        """Forget what an earlier hold read ahead: the backlog read delivers it again."""
        self.prefetched = None
        self.cut_at = None

    def retry_from_backlog(self) -> None:
        """After a conflict or an outage: what was read ahead is pending, so the backlog read
        has it, and the redelivery it causes is this process' own doing."""
        self.prefetched = None
        self.redeliveries_explained += 1
