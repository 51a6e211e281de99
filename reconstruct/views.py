"""Pages. Each view is a thin adapter around reconstruct.services / reconstruct.selectors."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.views.decorators.http import require_GET

from reconstruct import selectors
from reconstruct.models import Reconstruction

FILE_KINDS = ("original", "thumbnail", "model_input", "reconstruction")


def _get_reconstruction_for_user(request: HttpRequest, public_id: uuid.UUID) -> Reconstruction:
    """The caller's reconstruction, or 404 (also when it is someone else's: its existence is private)."""
    reconstruction = selectors.reconstruction_get(request.user, public_id)
    if reconstruction is None:
        raise Http404("No such reconstruction.")
    return reconstruction


def serve_reconstruction_file(reconstruction: Reconstruction, kind: str, download: bool) -> HttpResponse:
    if kind not in FILE_KINDS:
        raise Http404("No such file.")
    field = getattr(reconstruction, kind)
    if not field:
        raise Http404("This file does not exist yet.")
    extension = field.name.rsplit(".", 1)[-1]
    stem = (reconstruction.original_name.rsplit(".", 1)[0] or "car")[:80]
    filename = f"{stem}-{kind.replace('_', '-')}.{extension}"
    if hasattr(default_storage, "bucket_name") and not settings.RECONSTRUCT_FILES_VIA_APP:
        # S3: the browser fetches the private object directly through a short-lived presigned URL.
        parameters = {"ResponseContentDisposition": f'attachment; filename="{filename}"'} if download else None
        response: HttpResponse = HttpResponseRedirect(default_storage.url(field.name, parameters=parameters))
    else:
        response = FileResponse(default_storage.open(field.name, "rb"), as_attachment=download, filename=filename)
    response["Cache-Control"] = "private, max-age=300"
    return response


@login_required
@require_GET
def reconstruction_file(request: HttpRequest, public_id: uuid.UUID, kind: str) -> HttpResponse:
    reconstruction = _get_reconstruction_for_user(request, public_id)
    return serve_reconstruction_file(reconstruction, kind, download="download" in request.GET)
