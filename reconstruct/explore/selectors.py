"""Read queries of the latent-space features."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db.models import QuerySet

from reconstruct.models import Reconstruction

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


def reconstruction_get_shared(token: str) -> Reconstruction | None:
    """The finished result whose public link has this token, or None (unknown, or private again)."""
    if not token:
        return None
    return (
        Reconstruction.objects.filter(share_token=token, status=Reconstruction.Status.DONE)
        .select_related("model_version")
        .first()
    )


def reconstruction_list_done(user: AbstractBaseUser) -> QuerySet[Reconstruction]:
    """The user's finished results, newest first (what a morph can start from)."""
    return Reconstruction.objects.filter(owner=user, status=Reconstruction.Status.DONE).order_by("-created_at", "-id")
