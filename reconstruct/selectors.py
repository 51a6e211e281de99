"""Read queries of reconstructions (the registry's are in reconstruct/registry/selectors.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet

from reconstruct.models import Reconstruction

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


def reconstruction_get(user: AbstractBaseUser, public_id: str) -> Reconstruction | None:
    """The user's reconstruction with this public id, latent included, or None (also for someone else's)."""
    return _reconstructions_owned(user).filter(uuid=public_id).first()
