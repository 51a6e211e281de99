"""Read queries of reconstructions (the registry's are in reconstruct/registry/selectors.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet

from reconstruct.models import FILE_KINDS, Reconstruction

MODEL_VERSION_HEAVY_FIELDS = ("files", "metadata", "metrics", "notes")

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


def _reconstructions_owned(user: AbstractBaseUser) -> QuerySet[Reconstruction]:
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


def reconstruction_cards(user: AbstractBaseUser) -> QuerySet[Reconstruction]:
    """The user's reconstructions, newest first, with only the fields a gallery card shows (no model version,
    no JSON): each row costs a fraction of a full one, and a page has 24 (measured in ``loadtest.profile``)."""
    return Reconstruction.objects.filter(owner=user).only(*CARD_FIELDS).order_by("-created_at", "-id")


def reconstruction_files_get(user: AbstractBaseUser, public_id: str) -> Reconstruction | None:
    """The user's reconstruction with only what serving one of its files needs (its name and file fields), or
    None (also for someone else's): the file view's query, without the model version or the JSON."""
    return (
        Reconstruction.objects.filter(owner=user, uuid=public_id)
        .only("id", "uuid", "original_name", *FILE_KINDS)
        .first()
    )


def reconstruction_get(user: AbstractBaseUser, public_id: str) -> Reconstruction | None:
    """The user's reconstruction with this public id, latent included, or None (also for someone else's)."""
    return _reconstructions_owned(user).filter(uuid=public_id).first()
