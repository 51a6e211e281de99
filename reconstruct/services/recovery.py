"""Recovery of jobs that nobody is running: the periodic sweep (Celery beat, every RECONSTRUCT_SWEEP_INTERVAL s).

A job can be orphaned three ways, and each leaves a trace in its row:

- its worker died with it (SIGKILL, out of memory, the machine rebooted): the row stays ``running``,
  and Redis would hand the message back only after the visibility timeout (an hour);
- it ran into the hard time limit: Celery kills the process and acknowledges the message, the row
  stays ``running``;
- the broker was down or hung when it was queued: the row is ``pending`` with no ``queued_at``.

``reconstruction_sweep`` finds them and queues them again (or fails them, with a reason, once they
have used RECONSTRUCT_MAX_ATTEMPTS). Queuing a job twice is harmless: ``reconstruction_run`` claims
the row per attempt and only one attempt can mark it done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import reconstruction_dispatch

logger = logging.getLogger(__name__)

Status = Reconstruction.Status


@dataclass
class SweepReport:
    """What one sweep did: the primary keys it queued again and those it failed."""

    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def reconstruction_stuck_after() -> timedelta:
    """How long a job may run before it is taken for orphaned: the hard time limit plus a margin (s)."""
    return timedelta(seconds=settings.RECONSTRUCT_STUCK_AFTER)


def reconstruction_orphans() -> list[Reconstruction]:
    """Rows nobody is working on: running past the hard time limit, never queued, or queued and lost.

    A pending row is "never queued" once RECONSTRUCT_REQUEUE_AFTER s passed without ``queued_at`` (the
    request that created it queues it within that time, or failed to); "lost" once its message would
    have come back from Redis by itself (the visibility timeout), i.e. Redis lost it (data wiped).
    """
    now = timezone.now()
    running_since = now - reconstruction_stuck_after()
    never_queued = now - timedelta(seconds=settings.RECONSTRUCT_REQUEUE_AFTER)
    lost = now - timedelta(seconds=settings.CELERY_VISIBILITY_TIMEOUT)
    return list(
        Reconstruction.objects.filter(
            Q(status=Status.RUNNING, started_at__lt=running_since)
            | Q(status=Status.PENDING, queued_at__isnull=True, created_at__lt=never_queued)
            | Q(status=Status.PENDING, queued_at__lt=lost)
        ).only("pk", "status", "attempts", "started_at", "queued_at")
    )


def reconstruction_sweep() -> SweepReport:
    """Queue every orphaned reconstruction again, or fail it with a reason after its last attempt.

    Each row is moved with a conditional UPDATE (on the status and time it was found with), so two
    sweeps at once, or a worker finishing meanwhile, never move one twice. Safe to call any time.
    """
    report = SweepReport()
    for row in reconstruction_orphans():
        unchanged = Reconstruction.objects.filter(
            pk=row.pk, status=row.status, started_at=row.started_at, queued_at=row.queued_at
        )
        if row.status == Status.RUNNING and row.attempts >= settings.RECONSTRUCT_MAX_ATTEMPTS:
            moved = unchanged.update(
                status=Status.FAILED,
                error=f"The reconstruction was interrupted {row.attempts} times (its worker stopped or it ran "
                "out of time), so we gave up. Please press “Try again”, or try a smaller photo.",
                finished_at=timezone.now(),
            )
            if moved:
                report.failed.append(row.pk)
                logger.warning("reconstruction %s failed after %s interrupted attempts", row.pk, row.attempts)
            continue
        if row.status == Status.RUNNING:
            # Back to pending: its worker is gone, the next attempt claims it as usual.
            if not unchanged.update(status=Status.PENDING, queued_at=None):
                continue
            logger.warning("reconstruction %s running since %s has no worker: queued again", row.pk, row.started_at)
        reconstruction_dispatch(row.pk)
        report.requeued.append(row.pk)
    return report
