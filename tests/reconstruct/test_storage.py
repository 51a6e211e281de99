"""reconstruct/storage.py: one way to delete and serve stored files, on local disk and on S3 (moto over HTTP)."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import Http404

from reconstruct.storage import storage_delete_keys, storage_is_s3, storage_serve


def test_it_streams_a_local_file_with_a_correct_content_disposition(settings: Any) -> None:
    key = default_storage.save("things/car.png", ContentFile(b"\x89PNG pretend"))
    assert not storage_is_s3()
    response = storage_serve(key=key, filename='Mégane "rouge".png', download=True, max_age=60)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"\x89PNG pretend"
    disposition = response["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=utf-8''M%C3%A9gane%20%22rouge%22.png" in disposition
    assert response["Cache-Control"] == "private, max-age=60"


def test_it_answers_404_for_a_missing_or_empty_key(settings: Any) -> None:
    with pytest.raises(Http404):
        storage_serve(key="", filename="x.png")
    with pytest.raises(Http404):
        storage_serve(key="things/never-stored.png", filename="x.png")


def test_it_redirects_to_a_presigned_url_on_s3(on_s3: Any, settings: Any) -> None:
    settings.RECONSTRUCT_FILES_VIA_APP = False
    key = default_storage.save("things/car.png", ContentFile(b"pixels"))
    assert storage_is_s3()
    response = storage_serve(key=key, filename="Mégane.png", download=True)
    assert response.status_code == 302
    query = parse_qs(urlparse(response["Location"]).query)
    assert query["response-content-disposition"] == ["attachment; filename*=utf-8''M%C3%A9gane.png"]
    assert "X-Amz-Signature" in query
    inline = storage_serve(key=key, filename="car.png")
    assert "response-content-disposition" not in parse_qs(urlparse(inline["Location"]).query)


def test_it_streams_s3_objects_through_the_site_when_asked(on_s3: Any, settings: Any) -> None:
    settings.RECONSTRUCT_FILES_VIA_APP = True
    key = default_storage.save("things/car.png", ContentFile(b"pixels"))
    response = storage_serve(key=key, filename="car.png")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"pixels"


def test_it_deletes_what_it_can_and_logs_the_rest(settings: Any, monkeypatch: Any, caplog: Any) -> None:
    kept = default_storage.save("things/a.png", ContentFile(b"a"))
    gone = default_storage.save("things/b.png", ContentFile(b"b"))
    real_delete = default_storage.delete

    def flaky_delete(name: str) -> None:
        if name == kept:
            raise OSError("disk on fire")
        real_delete(name)

    monkeypatch.setattr(default_storage, "delete", flaky_delete)
    storage_delete_keys([kept, gone])
    assert default_storage.exists(kept) and not default_storage.exists(gone)
    assert f"could not delete {kept}" in caplog.text


def test_s3_media_writes_small_files_in_one_put_and_large_ones_as_before(on_s3: Any, monkeypatch: Any) -> None:
    """carsite/media_storage.py: a small write is one PutObject with S3Storage's parameters; a taken name still
    gets another (file_overwrite False); a file at the multipart threshold goes through S3Storage's own path."""
    from storages.backends.s3 import S3Storage

    folder = f"media-{uuid.uuid4()}"  # the S3 server lives for the whole session
    calls: list[str] = []
    client = default_storage.connection.meta.client
    monkeypatch.setattr(
        client, "put_object", lambda **kw: calls.append(kw["Key"]) or type(client).put_object(client, **kw)
    )
    first = default_storage.save(f"{folder}/car.png", ContentFile(b"\x89PNG small"))
    second = default_storage.save(f"{folder}/car.png", ContentFile(b"\x89PNG other"))
    assert first == f"{folder}/car.png" and second != first
    assert calls == [first, first, second]  # the second write of a taken name is refused, then renamed
    head = on_s3.client().head_object(Bucket=on_s3.bucket, Key=first)
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(b"\x89PNG small")
    assert on_s3.client().get_object(Bucket=on_s3.bucket, Key=second)["Body"].read() == b"\x89PNG other"

    through_s3transfer: list[str] = []
    original = S3Storage._save
    monkeypatch.setattr(
        S3Storage, "_save", lambda self, name, content: through_s3transfer.append(name) or original(self, name, content)
    )
    monkeypatch.setattr(default_storage.transfer_config, "multipart_threshold", 1024)
    large = default_storage.save(f"{folder}/large.bin", ContentFile(b"x" * 1024))
    assert through_s3transfer == [large] and len(calls) == 3
    assert on_s3.client().get_object(Bucket=on_s3.bucket, Key=large)["Body"].read() == b"x" * 1024


def test_s3_media_asks_s3_not_to_overwrite_instead_of_asking_first(on_s3: Any, settings: Any, monkeypatch: Any) -> None:
    """A new name costs one conditional PutObject (If-None-Match: *), no HEAD; a taken name is refused by S3 and
    another is chosen; with AWS_S3_CONDITIONAL_WRITES off, the name is checked first (S3Storage's way)."""
    folder = f"media-{uuid.uuid4()}"
    asked: list[str] = []
    from carsite.media_storage import MediaStorage

    original_exists = MediaStorage.exists
    monkeypatch.setattr(MediaStorage, "exists", lambda self, name: asked.append(name) or original_exists(self, name))
    first = default_storage.save(f"{folder}/car.png", ContentFile(b"one"))
    assert first == f"{folder}/car.png" and asked == []
    second = default_storage.save(f"{folder}/car.png", ContentFile(b"two"))
    assert second != first and asked[0] == first
    assert on_s3.client().get_object(Bucket=on_s3.bucket, Key=first)["Body"].read() == b"one"  # not replaced
    assert on_s3.client().get_object(Bucket=on_s3.bucket, Key=second)["Body"].read() == b"two"

    settings.AWS_S3_CONDITIONAL_WRITES = False
    asked.clear()
    third = default_storage.save(f"{folder}/bus.png", ContentFile(b"three"))
    assert third == f"{folder}/bus.png" and asked == [third]


def test_s3_media_writes_a_pair_of_files_at_once_and_keeps_neither_when_one_fails(on_s3: Any) -> None:
    """storage_save_all on S3: both writes in flight together (their PutObject calls overlap in time, on two
    threads), names in order; when one write fails, the other file is deleted and the failure raised."""
    import threading

    from django.core.exceptions import SuspiciousFileOperation

    from reconstruct.storage import storage_save_all

    folder = f"media-{uuid.uuid4()}"
    client = default_storage.connection.meta.client
    real_put = type(client).put_object
    thumbnail_started = threading.Event()
    seen: dict[str, bool] = {}

    def put(**kwargs: Any) -> Any:
        if kwargs["Key"].endswith("thumbnail.jpg"):
            thumbnail_started.set()
        else:  # the original's write waits (up to 10 s) for the thumbnail's to begin: only together can it
            seen["thumbnail began while the original was being written"] = thumbnail_started.wait(10)
        return real_put(client, **kwargs)

    client.put_object = put
    try:
        names = storage_save_all(
            [(f"{folder}/original.jpg", ContentFile(b"a photo")), (f"{folder}/thumbnail.jpg", ContentFile(b"small"))]
        )
        assert names == [f"{folder}/original.jpg", f"{folder}/thumbnail.jpg"]
        assert seen == {"thumbnail began while the original was being written": True}
        assert [on_s3.client().get_object(Bucket=on_s3.bucket, Key=n)["Body"].read() for n in names] == [
            b"a photo",
            b"small",
        ]

        with pytest.raises(SuspiciousFileOperation):
            storage_save_all([(f"{folder}/kept-not.png", ContentFile(b"fine")), ("../outside.png", ContentFile(b"x"))])
    finally:
        del client.put_object
    listed = on_s3.client().list_objects_v2(Bucket=on_s3.bucket, Prefix=f"{folder}/")
    assert sorted(item["Key"] for item in listed.get("Contents", [])) == sorted(names)  # kept-not.png deleted


def test_local_media_writes_a_pair_one_after_another_and_keeps_neither_when_one_fails(settings: Any) -> None:
    from django.core.exceptions import SuspiciousFileOperation

    from reconstruct.storage import storage_save_all

    folder = f"media-{uuid.uuid4()}"
    names = storage_save_all([(f"{folder}/a.png", ContentFile(b"a")), (f"{folder}/b.png", ContentFile(b"b"))])
    assert [default_storage.open(n).read() for n in names] == [b"a", b"b"]
    with pytest.raises(SuspiciousFileOperation):
        storage_save_all([(f"{folder}/c.png", ContentFile(b"c")), ("../outside.png", ContentFile(b"x"))])
    assert sorted(default_storage.listdir(folder)[1]) == ["a.png", "b.png"]
