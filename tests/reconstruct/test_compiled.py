"""reconstruct/compiled.py: a query compiled once per connection gives the very objects the ORM gives."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext

from reconstruct import selectors
from reconstruct.compiled import CompiledQuery
from reconstruct.models import FILE_KINDS, ApiToken, ModelVersion, Reconstruction
from reconstruct.services.tokens import api_token_authenticate, api_token_regenerate
from reconstruct.services.waiting import _unfinished

pytestmark = pytest.mark.django_db(transaction=True)


def _fields(obj: Any) -> dict[str, object]:
    """Every loaded (not deferred) field of ``obj``, by attname."""
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields if f.attname in obj.__dict__}


def _reconstruction(owner: Any, **fields: object) -> Reconstruction:
    version = ModelVersion.objects.create(
        name=f"v-{uuid.uuid4().hex[:8]}", source="trained", files={"a": 1}, metadata={"model": {"latent_dim": 4}}
    )
    return Reconstruction.objects.create(
        owner=owner,
        status="done",
        model_version=version,
        psnr=18.5,
        latent=[0.5, -1.0, 2.0, 0.0],
        car_box=[1, 2, 30, 40],
        finished_at=datetime(2026, 12, 1, 12, 0, 0).astimezone(),
        original="reconstructions/1/x/original.jpg",
        **fields,
    )


def test_a_reconstruction_read_compiled_is_the_orm_s_own(alice: Any) -> None:
    made = _reconstruction(alice)
    orm = (
        Reconstruction.objects.filter(owner=alice, uuid=made.uuid)
        .select_related("model_version")
        .defer(*(f"model_version__{name}" for name in selectors.MODEL_VERSION_HEAVY_FIELDS))
        .get()
    )
    with CaptureQueriesContext(connection) as queries:
        compiled = selectors.reconstruction_get(alice, made.uuid)
        name = compiled.model_version.name  # joined: no second query
    assert len(queries) == 1
    assert _fields(compiled) == _fields(orm)
    assert name == made.model_version.name
    assert compiled.latent == [0.5, -1.0, 2.0, 0.0] and compiled.car_box == [1, 2, 30, 40]  # JSON decoded
    assert compiled.finished_at == made.finished_at and compiled.finished_at.tzinfo is not None
    # The model version's JSON stays deferred, as in the ORM's query: read only when asked for.
    assert _fields(compiled.model_version) == _fields(orm.model_version)
    assert "metadata" not in compiled.model_version.__dict__
    assert compiled.model_version.metadata == {"model": {"latent_dim": 4}}
    files = selectors.reconstruction_files_get(alice, str(made.uuid))
    assert set(_fields(files)) == {"id", "uuid", "original_name", *FILE_KINDS}
    assert files.original.name == "reconstructions/1/x/original.jpg"


def test_it_finds_only_the_owner_s_row_and_nothing_for_an_id_that_is_not_a_uuid(alice: Any, bob: Any) -> None:
    made = _reconstruction(alice)
    assert selectors.reconstruction_get(bob, made.uuid) is None
    assert selectors.reconstruction_files_get(bob, made.uuid) is None
    assert selectors.reconstruction_get(alice, "not-a-uuid") is None
    assert selectors.reconstruction_get(alice, uuid.uuid4()) is None
    assert _unfinished(made.pk) is False
    Reconstruction.objects.filter(pk=made.pk).update(status="running")
    assert _unfinished(made.pk) is True


def test_a_token_lookup_compiled_loads_its_user_in_the_same_query(alice: Any) -> None:
    key = api_token_regenerate(alice)
    ApiToken.objects.filter(user=alice).update(last_used_at=datetime.now().astimezone())  # no write below
    with CaptureQueriesContext(connection) as queries:
        user = api_token_authenticate(key)
        assert user.username == "alice" and user.is_active
    assert len(queries) == 1
    assert api_token_authenticate(key + "x") is None


def test_each_thread_s_connection_compiles_its_own_and_frees_it_with_the_connection(alice: Any) -> None:
    import gc
    import weakref

    from django.db import connections

    made = _reconstruction(alice)
    found: list[object] = []
    wrappers: list[weakref.ref] = []

    def read() -> None:
        try:
            row = selectors.reconstruction_get(alice, made.uuid)
            plan = selectors._GET._plan(connections["default"])
            # The plan is this thread's own, compiled for this thread's connection.
            found.append((row.pk, plan.compiler.connection is connections["default"]))
            wrappers.append(weakref.ref(connections["default"]))
        finally:
            connection.close()

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [(made.pk, True)] * 3
    del threads
    gc.collect()
    assert [ref() for ref in wrappers] == [None, None, None]  # the plans did not keep the dead threads' connections
    assert selectors.reconstruction_get(alice, made.uuid).pk == made.pk


def test_parameters_declared_out_of_the_orm_s_order_fail_at_once(alice: Any) -> None:
    made = _reconstruction(alice)
    swapped = CompiledQuery(
        lambda public_id, owner_id: Reconstruction.objects.filter(owner_id=owner_id).filter(uuid=public_id)[:1],
        [(Reconstruction._meta.get_field("uuid"), uuid.UUID(int=0)), (Reconstruction._meta.get_field("owner"), 0)],
    )
    with pytest.raises(ImproperlyConfigured, match="not the declared values"):
        swapped.first(made.uuid, alice.pk)
    alike = CompiledQuery(
        lambda first, second: Reconstruction.objects.filter(owner_id=first).filter(attempts=second)[:1],
        [(Reconstruction._meta.get_field("owner"), 0), (Reconstruction._meta.get_field("attempts"), 0)],
    )
    with pytest.raises(ImproperlyConfigured, match="must differ"):  # an order the check could not see
        alike.first(alice.pk, 0)
    from django.db.models import F

    annotated = CompiledQuery(
        lambda owner_id: Reconstruction.objects.filter(owner_id=owner_id).annotate(seven=F("id"))[:1],
        [(Reconstruction._meta.get_field("owner"), 0)],
    )
    with pytest.raises(ImproperlyConfigured, match="annotations"):
        annotated.first(alice.pk)


def test_the_session_engine_reads_django_s_sessions_and_ends_expired_ones(client: Any, alice: Any) -> None:
    from datetime import timedelta

    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore as DjangoStore
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from reconstruct.sessions import SessionStore

    made = DjangoStore()  # a session Django's own engine made (as before this engine): still signed in
    made.update(
        {
            SESSION_KEY: str(alice.pk),
            BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
            HASH_SESSION_KEY: alice.get_session_auth_hash(),
        }
    )
    made.create()
    loaded = SessionStore(made.session_key).load()
    assert loaded[SESSION_KEY] == str(alice.pk) and loaded[BACKEND_SESSION_KEY] == "reconstruct.auth.ModelBackend"
    client.cookies["sessionid"] = made.session_key
    assert client.get("/gallery/").status_code == 200
    Session.objects.filter(session_key=made.session_key).update(expire_date=timezone.now() - timedelta(seconds=1))
    expired = SessionStore(made.session_key)
    assert expired.load() == {} and expired.session_key is None
    assert client.get("/gallery/").status_code == 302  # to the login form
    assert SessionStore("no-such-key-" + "x" * 20).load() == {}


def test_the_gallery_counts_and_reads_its_first_page_compiled(client: Any, alice: Any) -> None:
    for number in range(30):
        Reconstruction.objects.create(owner=alice, status="done", original_name=f"car-{number:02}.png", psnr=20.0)
    client.force_login(alice)
    page = client.get("/gallery/").content.decode()
    assert "30 reconstructions" in page and "Page 1 of 2" in page
    assert "car-29" in page and "car-06" in page and "car-05" not in page
    second = client.get("/gallery/?page=2").content.decode()
    assert "car-05" in second and "car-00" in second and "car-06" not in second


def test_the_session_backend_reads_its_user_compiled_as_django_s_would(alice: Any, bob: Any) -> None:
    from django.contrib.auth.backends import ModelBackend as DjangoBackend

    from reconstruct.auth import ModelBackend

    backend, django_backend = ModelBackend(), DjangoBackend()
    with CaptureQueriesContext(connection) as queries:
        found = backend.get_user(alice.pk)
    assert found == alice and len(queries) == 1
    assert {f.attname: getattr(found, f.attname) for f in found._meta.concrete_fields} == {
        f.attname: getattr(alice, f.attname) for f in alice._meta.concrete_fields
    }
    assert backend.get_user(10**9) is None is django_backend.get_user(10**9)
    bob.is_active = False
    bob.save(update_fields=["is_active"])
    assert backend.get_user(bob.pk) is None is django_backend.get_user(bob.pk)
