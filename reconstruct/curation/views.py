"""The one curation page outside the admin: a user offers a reconstruction's photo to the training set."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from reconstruct import selectors as site_selectors
from reconstruct.curation.services.arrival import dataset_image_donate


@login_required
@require_POST
def reconstruction_donate(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """POST: offer the photo of one of the caller's reconstructions to the training set (404 for someone else's)."""
    reconstruction = site_selectors.reconstruction_get(request.user, public_id)
    if reconstruction is None:
        raise Http404("No such reconstruction.")  # someone else's is as absent as a missing one
    try:
        result = dataset_image_donate(reconstruction=reconstruction, user=request.user)
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        if result.added:
            messages.success(request, "Thank you! Your photo was offered to the training set; staff will review it.")
        else:
            messages.info(request, "This photo is already in the training set. Thank you all the same!")
    return HttpResponseRedirect(reverse("reconstruct:detail", args=[reconstruction.uuid]))
