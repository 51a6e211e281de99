"""Receivers: a deleted reconstruction takes its files with it, however it was deleted (gallery, admin, a deleted
user); a successful login clears the failures counted against that account (reconstruct/throttle.py)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.db.models.signals import post_delete
from django.dispatch import receiver

from reconstruct.models import Reconstruction
from reconstruct.services.reconstructions import reconstruction_delete_files
from reconstruct.throttle import throttle_reset_account


@receiver(post_delete, sender=Reconstruction)
def _delete_reconstruction_files(sender: type[Reconstruction], instance: Reconstruction, **kwargs: Any) -> None:
    reconstruction_delete_files(instance)


@receiver(user_logged_in)
def _reset_throttle_of_account(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    throttle_reset_account(user.get_username())
