"""Media on S3 (AWS_STORAGE_BUCKET_NAME set): django-storages' S3Storage, with a lighter write for small files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.base import File
from django.core.files.utils import validate_file_name
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

# S3's answers to a conditional write (If-None-Match: *) whose key exists, or is being written meanwhile.
KEY_TAKEN = ("PreconditionFailed", "ConditionalRequestConflict")

# Threads for MediaStorage.save_concurrently, made once per process (on Lambda they sleep between invocations).
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="s3-write")


class MediaStorage(S3Storage):
    """django-storages' S3Storage whose small writes are one ``PutObject`` call.

    S3Storage writes every file through boto3's ``upload_fileobj`` (s3transfer: a transfer manager, its futures
    and, by default, a thread pool per call), which is made for multipart uploads of large files. For the
    files this site writes per upload (a photo of at most RECONSTRUCT_MAX_UPLOAD_BYTES, its thumbnail, two PNGs
    of a few kB) one ``PutObject`` does the same: measured against moto's server on loopback, 7.9 ms of wall
    clock and 3.2 ms of CPU per write instead of 12.4 and 6.5 ms (each upload writes four files). Files at or
    above the transfer configuration's ``multipart_threshold`` (8 MiB by default) and gzip-compressed writes
    go through S3Storage's own path, unchanged. The object's parameters (content type, ACL, cache control,
    metadata) are S3Storage's own (``_get_write_parameters``), and so are the names it chooses.

    With ``file_overwrite`` off (the site's setting) and AWS_S3_CONDITIONAL_WRITES on (the default), a small
    write does not first ask whether its name is taken (a HEAD request: 6 ms of wall clock and 2.4 ms of CPU
    here): the ``PutObject`` is conditional (``If-None-Match: *``, S3's conditional writes, AWS S3 User Guide,
    "Add preconditions to S3 operations with conditional requests"), so S3 itself refuses to replace an
    object, and only then is another name chosen (S3Storage's way, with its HEAD requests) and written. That
    also closes the gap between the HEAD and the write in which another writer could take the name. An
    S3-compatible server that ignores the condition would overwrite a taken name: turn the setting off there.

    Raises what ``PutObject`` raises: botocore's ``ClientError`` (S3 answered an error) or ``BotoCoreError``
    (no answer); reconstruct/storage.py: storage_error_is_transient tells them apart.
    """

    def _conditional(self) -> bool:
        return not self.file_overwrite and getattr(settings, "AWS_S3_CONDITIONAL_WRITES", True)

    def _small(self, content: Any) -> bool:
        size = getattr(content, "size", None)
        return not self.gzip and size is not None and size < self.transfer_config.multipart_threshold

    def get_available_name(self, name: str, max_length: int | None = None) -> str:
        if self._conditional() and (max_length is None or len(name) <= max_length):
            return name  # _save finds out whether it is taken
        return super().get_available_name(name, max_length)

    def _save(self, name: str, content: Any) -> str:
        if not self._small(content):
            if self._conditional():  # S3Storage's own write: the name is checked first, as it does
                name = super().get_available_name(name)
            return super()._save(name, content)
        return self._put_small(self.connection.meta.client, name, content)

    def _put_small(self, client: Any, name: str, content: Any) -> str:
        """One ``PutObject`` of ``content`` (under the multipart threshold) with ``client``; the name stored."""
        if hasattr(content, "seek"):
            content.seek(0, os.SEEK_SET)
        body = content.read()
        if isinstance(body, str):
            body = body.encode()
        condition = {"IfNoneMatch": "*"} if self._conditional() else {}
        for _ in range(5):
            cleaned_name = clean_name(name)
            key = self._normalize_name(cleaned_name)
            params = self._get_write_parameters(key, content)
            try:
                client.put_object(Bucket=self.bucket_name, Key=key, Body=body, **params, **condition)
                return cleaned_name
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") not in KEY_TAKEN:
                    raise
            name = super().get_available_name(name)  # taken: another name, as S3Storage would choose
        raise FileExistsError(f"no free name for {name!r} after 5 tries")

    def save_concurrently(self, files: Sequence[tuple[str, Any]]) -> list[str | BaseException]:
        """Write several small files at once: one ``PutObject`` each, in threads, so their round trips overlap.

        ``files``: (name, content) pairs, content a Django ``File`` or bytes-like ``ContentFile``. Returns, in
        order, each file's stored name or the exception its write raised (never raises itself: the caller,
        reconstruct/storage.py: storage_save_all, deletes what was written when one fails). Files at or above
        the multipart threshold, or without conditional writes, are written one after another by ``save``.
        The threads share this thread's boto3 client (clients are thread-safe, boto3 guide "Multithreading or
        multiprocessing with clients"; S3Storage's resources are per thread, and making one in each writer
        thread would cost a cold start tens of ms). Measured through zappa's handler against moto on loopback:
        see README, Speed under load.
        """
        if len(files) < 2 or not self._conditional() or not all(self._small(content) for _, content in files):
            outcomes: list[str | BaseException] = []
            for name, content in files:
                try:
                    outcomes.append(self.save(name, content))
                except Exception as error:
                    outcomes.append(error)
            return outcomes
        client = self.connection.meta.client

        def write(name: str, content: Any) -> str:
            if not hasattr(content, "chunks"):
                content = File(content, name)
            validate_file_name(name, allow_relative_path=True)
            return self._put_small(client, self.get_available_name(name), content)

        futures = [_WRITERS.submit(write, name, content) for name, content in files]
        return [future.exception() or future.result() for future in futures]
