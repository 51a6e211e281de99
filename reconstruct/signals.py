"""A deleted reconstruction takes its files with it, however it was deleted (gallery, admin, a deleted user)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete
from django.dispatch import receiver

from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import reconstruction_delete_files


@receiver(post_delete, sender=Reconstruction)
def _delete_reconstruction_files(sender: type[Reconstruction], instance: Reconstruction, **kwargs: Any) -> None:
    reconstruction_delete_files(instance)
