"""python manage.py import_dataset DIR: add a folder of photos to the training set (as pending).

The same service as the admin's bulk upload page: exact duplicates are skipped, everything else
arrives with its checks computed. Running it again on the same folder adds nothing twice.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from reconstruct.curation.models import DatasetImage
from reconstruct.curation.services.arrival import AddResult, dataset_image_add_many, folder_arrivals


class ProgressBar:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int, stream: Any = sys.stderr) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.done = 0
        self.started = time.monotonic()
        self.counts: Counter[str] = Counter()
        self._tty = hasattr(stream, "isatty") and stream.isatty()
        self._last_tenth = -1

    def update(self, result: AddResult) -> None:
        self.done += 1
        self.counts["added" if result.added else "skipped"] += 1
        if result.flags():
            self.counts["flagged"] += 1
        tenth = self.done * 10 // self.total
        if self._tty or tenth != self._last_tenth or self.done == self.total:
            self._last_tenth = tenth
            self.stream.write(("\r" if self._tty else "") + self.line() + ("" if self._tty else "\n"))
            self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate else 0.0
        filled = int(30 * self.done / self.total)
        return (
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
            f"{rate:.0f} photos/s, {int(left) // 60}:{int(left) % 60:02d} left · "
            f"added {self.counts['added']}, skipped {self.counts['skipped']}, flagged {self.counts['flagged']}"
        )

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")


class Command(BaseCommand):
    help = "Add the photos in DIR to the training set as pending (exact duplicates skipped, checks computed)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("folder", type=Path, help="folder of JPEG/PNG/WebP photos, e.g. ../shared/data/cars")
        parser.add_argument("--recursive", action="store_true", help="also look in sub-folders")
        parser.add_argument("--limit", type=int, help="import only the first N photos (sorted by name)")
        parser.add_argument("--user", help="username recorded as the one who added them")
        parser.add_argument("--report", action="store_true", help="list every skipped and flagged file")

    def handle(
        self, *args: Any, folder: Path, recursive: bool, limit: int | None, user: str | None, **options: Any
    ) -> None:
        added_by = None
        if user:
            added_by = get_user_model().objects.filter(username=user).first()
            if added_by is None:
                raise CommandError(f"no user named {user!r}")
        try:
            arrivals = folder_arrivals(folder, recursive=recursive)
        except FileNotFoundError as error:
            raise CommandError(str(error)) from None
        if limit is not None:
            arrivals = arrivals[:limit]
        if not arrivals:
            raise CommandError(f"no JPEG, PNG or WebP photos in {folder}")
        self.stderr.write(f"Importing {len(arrivals)} photos from {folder} ...")
        bar = ProgressBar(len(arrivals), stream=self.stderr._out)
        report = dataset_image_add_many(
            arrivals=arrivals, source=DatasetImage.Source.IMPORT, added_by=added_by, progress=bar.update
        )
        bar.close()
        elapsed = time.monotonic() - bar.started
        if options["report"]:
            for result in report.results:
                if not result.added:
                    self.stdout.write(f"skipped {result.name}: {result.skipped}")
                elif result.flags():
                    self.stdout.write(f"flagged {result.name} (#{result.image.pk}): {'; '.join(result.flags())}")
        reasons = Counter("exact duplicates" if r.duplicate_of else r.skipped for r in report.skipped)
        detail = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
        self.stdout.write(
            self.style.SUCCESS(
                f"Added {len(report.added)} photos as pending, skipped {len(report.skipped)}"
                f"{f' ({detail})' if detail else ''}, flagged {len(report.flagged)}; "
                f"{elapsed:.1f} s ({len(arrivals) / max(elapsed, 1e-9):.0f} photos/s). "
                "Review them in the admin: Training data and models > Training photos."
            )
        )
