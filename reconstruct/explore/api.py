"""The JSON API of the latent-space features, with the conventions of reconstruct/api.py: authentication by
``Authorization: Token <key>`` or the session (CSRF for a session that changes something), errors as
``{"error": message, "code": ...}``, 404 for anything of someone else's.

    GET    /api/latent-space/                          the active model's principal directions
    GET    /api/reconstructions/<id>/latent/           a result's latent mean, slider coordinates, map position
    POST   /api/reconstructions/<id>/edit/             {"offsets": [...]} -> PNG; with "save": true -> 201 result
    POST   /api/reconstructions/<id>/share/            -> {"public_url"}; DELETE: private again (204)
    GET    /api/morph/<id>/<id>/?steps=8&method=slerp  frames' latents and the strip/animation URLs
    GET    /api/samples/?seed=1&temperature=1&count=8  latents and image URLs of new cars
    POST   /api/samples/                               {"seed", "temperature", "index"} -> 201 result (sampled)
    POST   /api/decode/                                {"latent": [...]} -> PNG
    GET    /api/map/                                   the caller's results on the 2-D map
"""

from __future__ import annotations

import uuid
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.http import urlencode

from ml import latent
from reconstruct import presenters, selectors
from reconstruct.explore import services
from reconstruct.http import api_view, created_response, json_body, json_error, rate_limited_response
from reconstruct.models import Reconstruction
from reconstruct.services.uploads import UploadRateLimited

NOT_FOUND = "No such reconstruction."


def _body(request: HttpRequest) -> dict[str, Any] | None:
    """The JSON object in the body ({} when empty), or None when it is not one."""
    if not request.body:
        return {}
    try:
        data = json_body(request)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _bad_body(example: str) -> JsonResponse:
    return json_error(f"The body must be a JSON object like {example}.", 400, code="bad_request")


def _done(request: HttpRequest, public_id: uuid.UUID) -> Reconstruction | None:
    item = selectors.reconstruction_get(request.user, public_id)
    return item if item is not None and item.status == Reconstruction.Status.DONE else None


def _invalid(problem: ValidationError) -> JsonResponse:
    return json_error(problem.messages[0], 400, code=problem.code or "invalid")


def _unavailable(problem: services.LatentUnavailable) -> JsonResponse:
    return json_error(str(problem), 409, code="latent_unavailable")


def _png(data: bytes) -> HttpResponse:
    return HttpResponse(data, content_type="image/png")


@api_view(("GET",))
def latent_space(request: HttpRequest) -> HttpResponse:
    """The active model's latent size and principal directions (share of variance, standard deviation)."""
    space = services.latent_space_active()
    return JsonResponse(
        {
            "model_version": space.version.name,
            "latent_dim": space.model.config.latent_dim,
            "directions": space.directions(len(space.pca["components"]) if space.pca else 0),
            "sliders": min(services.SLIDERS, len(space.pca["components"])) if space.pca else 0,
            "max_offset": services.MAX_OFFSET,
            "map": bool(space.projection),
        }
    )


@api_view(("GET",))
def reconstruction_latent(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """A result's latent mean under the active model, its coordinates along the principal directions
    (standard deviations) and its place on the map (0..1)."""
    item = _done(request, public_id)
    if item is None:
        return json_error(NOT_FOUND, 404)
    space = services.latent_space_active()
    try:
        z = services.reconstruction_latent(item, space)
    except services.LatentUnavailable as problem:
        return _unavailable(problem)
    coordinates = latent.pca_coordinates(z, space.pca, services.SLIDERS) if space.pca else []
    position = latent.map_position(z, space.projection) if space.projection else None
    return JsonResponse(
        {
            "id": str(item.uuid),
            "model_version": space.version.name,
            "latent": [float(v) for v in z],
            "coordinates": [round(float(v), 4) for v in coordinates],
            "map": {"x": position[0], "y": position[1]} if position else None,
        }
    )


@api_view(("POST",))
def reconstruction_edit(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """POST {"offsets": [s1, s2, ...]} (standard deviations along directions 1, 2, ...): the moved result as
    PNG; with "save": true it is kept in the gallery instead (201, the new result)."""
    item = _done(request, public_id)
    if item is None:
        return json_error(NOT_FOUND, 404)
    body = _body(request)
    if body is None:
        return _bad_body('{"offsets": [1.5, 0, -1]}')
    offsets = body.get("offsets", [])
    try:
        if body.get("save"):
            return created_response(
                request, services.reconstruction_edit_save(user=request.user, reconstruction=item, offsets=offsets)
            )
        return _png(services.image_png(services.reconstruction_edit_image(item, offsets)))
    except UploadRateLimited as problem:
        return rate_limited_response(problem)
    except ValidationError as problem:
        return _invalid(problem)
    except services.LatentUnavailable as problem:
        return _unavailable(problem)


@api_view(("POST", "DELETE"))
def reconstruction_share(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """POST: make the result public (200, {"public_url"}; the same link while it stays public).
    DELETE: private again (204); the link answers 404 from then on."""
    item = _done(request, public_id)
    if item is None:
        return json_error(NOT_FOUND, 404)
    if request.method == "DELETE":
        services.reconstruction_unshare(item)
        return HttpResponse(status=204)
    token = services.reconstruction_share(item)
    return JsonResponse(
        {"id": str(item.uuid), "public_url": request.build_absolute_uri(reverse("explore:public", args=[token]))}
    )


@api_view(("GET",))
def morph(request: HttpRequest, first: uuid.UUID, second: uuid.UUID) -> HttpResponse:
    """The walk between two of the caller's results: each frame's latent and the strip/animation URLs."""
    a, b = _done(request, first), _done(request, second)
    if a is None or b is None:
        return json_error(NOT_FOUND, 404)
    try:
        steps, method = services.morph_options(request.GET.get("steps"), request.GET.get("method"))
        space = services.latent_space_active()
        path = latent.interpolate(
            services.reconstruction_latent(a, space), services.reconstruction_latent(b, space), steps, method
        )
    except ValidationError as problem:
        return _invalid(problem)
    except services.LatentUnavailable as problem:
        return _unavailable(problem)
    query = "?" + urlencode({"steps": steps, "method": method})
    base = reverse("explore:morph", args=[first, second])

    def absolute(path: str) -> str:
        return request.build_absolute_uri(path)

    return JsonResponse(
        {
            "from": str(first),
            "to": str(second),
            "steps": steps,
            "method": method,
            "model_version": space.version.name,
            "url": absolute(base + query),
            "strip": absolute(f"{base}strip.png{query}"),
            "webp": absolute(f"{base}morph.webp{query}"),
            "gif": absolute(f"{base}morph.gif{query}"),
            "latents": [[float(v) for v in row] for row in path],
        }
    )


@api_view(("GET", "POST"))
def samples(request: HttpRequest) -> HttpResponse:
    """GET ?seed=&temperature=&count=: new cars (latents and image URLs; the same seed gives the same cars).
    POST {"seed", "temperature", "index"}: keep one in the gallery (201, a result with origin "sampled")."""
    if request.method == "POST":
        body = _body(request)
        if body is None:
            return _bad_body('{"seed": 42, "temperature": 0.8, "index": 3}')
        try:
            seed, temperature = services.sample_options(body.get("seed"), body.get("temperature"))
            index = body.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool):
                raise ValidationError("index must be a whole number.", code="bad_index")
            kept = services.sample_keep(user=request.user, seed=seed, temperature=temperature, index=index)
        except UploadRateLimited as problem:
            return rate_limited_response(problem)
        except ValidationError as problem:
            return _invalid(problem)
        return created_response(request, kept)
    try:
        seed, temperature = services.sample_options(
            request.GET.get("seed") or services.sample_seed_new(), request.GET.get("temperature")
        )
        count = int(request.GET.get("count") or services.SAMPLE_COUNT)
        if not 1 <= count <= services.SAMPLE_MAX_COUNT:
            raise ValueError
    except ValidationError as problem:
        return _invalid(problem)
    except ValueError:
        return json_error(f"count must be between 1 and {services.SAMPLE_MAX_COUNT}.", 400, code="bad_count")
    space, latents = services.sample_latents(seed, temperature, count)
    page = reverse("explore:new_cars") + "?" + urlencode({"seed": seed, "temperature": temperature})
    return JsonResponse(
        {
            "seed": seed,
            "temperature": temperature,
            "model_version": space.version.name,
            "url": request.build_absolute_uri(page),
            "samples": [
                {
                    "index": i,
                    "image": request.build_absolute_uri(
                        reverse("explore:new_car_image", args=[seed, i]) + f"?temperature={temperature}"
                    ),
                    "latent": [float(v) for v in row],
                }
                for i, row in enumerate(latents)
            ],
        }
    )


@api_view(("POST",))
def decode(request: HttpRequest) -> HttpResponse:
    """POST {"latent": [latent_dim numbers]}: the active model's picture of it (PNG, the full frame)."""
    body = _body(request)
    if body is None:
        return _bad_body('{"latent": [0.1, -0.3, ...]}')
    try:
        return _png(services.image_png(services.latent_decode(body.get("latent"))))
    except ValidationError as problem:
        return _invalid(problem)


@api_view(("GET",))
def car_map(request: HttpRequest) -> HttpResponse:
    """The caller's finished results on the 2-D map: x, y in [0, 1]; "left_out" says which are not and why."""
    try:
        result = services.reconstruction_map(request.user)
    except services.LatentUnavailable as problem:
        return _unavailable(problem)
    return JsonResponse(
        {
            "points": [
                {
                    "id": str(point.reconstruction.uuid),
                    "x": round(point.x, 4),
                    "y": round(point.y, 4),
                    "origin": point.reconstruction.origin,
                    "thumbnail": request.build_absolute_uri(presenters.file_url(point.reconstruction, "thumbnail")),
                    "url": request.build_absolute_uri(reverse("reconstruct:detail", args=[point.reconstruction.uuid])),
                }
                for point in result.points
            ],
            "left_out": result.left_out,
        }
    )
