"""reconstruct/storage.py: one way to delete and serve stored files, on local disk and on S3 (moto over HTTP)."""

from __future__ import annotations

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
