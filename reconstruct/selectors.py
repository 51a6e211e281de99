"""Read queries of reconstructions (the registry's are in reconstruct/registry/selectors.py)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.db.models import QuerySet

from reconstruct.compiled import CompiledQuery
from reconstruct.models import FILE_KINDS, Reconstruction

MODEL_VERSION_HEAVY_FIELDS = ("files", "metadata", "metrics", "notes")

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


def _reconstructions_owned(user: AbstractBaseUser | int) -> QuerySet[Reconstruction]:
    return (
        Reconstruction.objects.filter(owner=user)
        .select_related("model_version")
        .defer(*(f"model_version__{name}" for name in MODEL_VERSION_HEAVY_FIELDS))
    )


def reconstruction_list(user: AbstractBaseUser) -> QuerySet[Reconstruction]:
    """The user's reconstructions, newest first, with their model version's name (not its JSON: the metadata,
    files and metrics of a version are kilobytes decoded per row, which no page of reconstructions shows),
    without their latent (128 numbers of JSON per row, which only the explore pages read: loading one later
    costs a query)."""
    return _reconstructions_owned(user).defer("latent").order_by("-created_at", "-id")


# What a gallery card shows (templates/reconstruct/_card.html), and nothing else.
CARD_FIELDS = ("id", "uuid", "status", "origin", "psnr", "original_name", "created_at", "thumbnail", "reconstruction")


def reconstruction_cards(user: AbstractBaseUser | int) -> QuerySet[Reconstruction]:
    """The user's reconstructions, newest first, with only the fields a gallery card shows (no model version,
    no JSON): each row costs a fraction of a full one, and a page has 24 (measured in ``loadtest.profile``)."""
    return Reconstruction.objects.filter(owner=user).only(*CARD_FIELDS).order_by("-created_at", "-id")


GALLERY_PAGE_SIZE = 24
_OWNER = ((Reconstruction._meta.get_field("owner"), 0),)
# The gallery's count and its first page (every upload's round in `make loadtest` opens it): compiled once per
# connection (reconstruct/compiled.py).
_CARDS = CompiledQuery(reconstruction_cards, _OWNER)
_CARDS_FIRST_PAGE = CompiledQuery(lambda owner_id: reconstruction_cards(owner_id)[:GALLERY_PAGE_SIZE], _OWNER)


class GalleryCards:
    """The user's gallery cards (``reconstruction_cards``) as the object list of a Django ``Paginator`` of
    GALLERY_PAGE_SIZE a page: the count and the first page are read by compiled queries, other pages by the
    QuerySet."""

    ordered = True  # newest first (Paginator warns about an unordered list)

    def __init__(self, user: AbstractBaseUser) -> None:
        self._user = user

    def count(self) -> int:
        return _CARDS.count(self._user.pk)

    def __getitem__(self, index: slice) -> list[Reconstruction]:
        if index.start in (0, None) and index.stop == GALLERY_PAGE_SIZE and index.step is None:
            return _CARDS_FIRST_PAGE.list(self._user.pk)
        return list(reconstruction_cards(self._user)[index])


# The two lookups of one reconstruction every upload's round makes (its status or the upload's answer, and its
# picture): compiled once per connection (reconstruct/compiled.py). Their parameters in the SQL's order: the owner's
# id, then the public id (a uuid is unique: no ORDER BY).
_OWNER_AND_UUID = (
    (Reconstruction._meta.get_field("owner"), 0),
    (Reconstruction._meta.get_field("uuid"), uuid.UUID(int=0)),
)
_FILES_GET = CompiledQuery(
    lambda owner_id, public_id: (
        Reconstruction.objects.filter(owner_id=owner_id)
        .filter(uuid=public_id)
        .only("id", "uuid", "original_name", *FILE_KINDS)
        .order_by()[:1]
    ),
    _OWNER_AND_UUID,
)
_GET = CompiledQuery(
    lambda owner_id, public_id: _reconstructions_owned(owner_id).filter(uuid=public_id).order_by()[:1],
    _OWNER_AND_UUID,
)


def _public_uuid(public_id: str | uuid.UUID) -> uuid.UUID | None:
    if isinstance(public_id, uuid.UUID):
        return public_id
    try:
        return uuid.UUID(str(public_id))
    except ValueError:
        return None


def reconstruction_files_get(user: AbstractBaseUser, public_id: str | uuid.UUID) -> Reconstruction | None:
    """The user's reconstruction with only what serving one of its files needs (its name and file fields), or
    None (also for someone else's, or a public id that is not a UUID): the file view's query, without the model
    version or the JSON."""
    found = _public_uuid(public_id)
    return _FILES_GET.first(user.pk, found) if found is not None and user.pk is not None else None


def reconstruction_get(user: AbstractBaseUser, public_id: str | uuid.UUID) -> Reconstruction | None:
    """The user's reconstruction with this public id, latent included, or None (also for someone else's, or a
    public id that is not a UUID)."""
    found = _public_uuid(public_id)
    return _GET.first(user.pk, found) if found is not None and user.pk is not None else None
