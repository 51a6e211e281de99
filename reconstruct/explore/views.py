"""Pages of the latent-space features; each view is a thin adapter around reconstruct/explore/services.py.

Every URL that names a result answers 404 unless it is the caller's own (public links: while shared).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_POST, require_safe

from reconstruct import presenters, selectors
from reconstruct.explore import selectors as explore_selectors
from reconstruct.explore import services
from reconstruct.http import token_login
from reconstruct.models import Reconstruction
from reconstruct.services.uploads import UploadRateLimited

PUBLIC_KINDS = ("original", "model_input", "reconstruction", "thumbnail")
MORPH_FILES = {"strip.png": "image/png", "morph.webp": "image/webp", "morph.gif": "image/gif"}


def _get_done_for_user(request: HttpRequest, public_id: uuid.UUID) -> Reconstruction:
    """The caller's finished result, or 404 (also for someone else's: its existence is private)."""
    reconstruction = selectors.reconstruction_get(request.user, public_id)
    if reconstruction is None or reconstruction.status != Reconstruction.Status.DONE:
        raise Http404("No such reconstruction.")
    return reconstruction


def login_or_token(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """For pictures the JSON API links to: the session, or ``Authorization: Token <key>`` (401 if bad)."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        refused = token_login(request)
        if refused is not None:
            return refused
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def _png_response(data: bytes, max_age: int = 300) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = f"private, max-age={max_age}"
    return response


# --- Morph ---------------------------------------------------------------------------------------------------


@login_required
@require_GET
def morph_pick(request: HttpRequest) -> HttpResponse:
    """Pick two of your finished results (``?pick=<id>&pick=<id>`` goes to their morph)."""
    picked = request.GET.getlist("pick")
    if len(picked) == 2 and picked[0] != picked[1]:
        try:
            first, second = (uuid.UUID(value) for value in picked)
        except ValueError:
            raise Http404("No such reconstruction.") from None
        return redirect("explore:morph", first=first, second=second)
    if picked:
        messages.error(request, "Pick exactly two different cars to morph between.")
    return render(
        request,
        "explore/morph_pick.html",
        {"results": explore_selectors.reconstruction_list_done(request.user)[:200], "start": request.GET.get("from")},
    )


def _morph_request(request: HttpRequest, first: uuid.UUID, second: uuid.UUID) -> tuple[Reconstruction, Reconstruction]:
    return _get_done_for_user(request, first), _get_done_for_user(request, second)


@login_required
@require_GET
def morph(request: HttpRequest, first: uuid.UUID, second: uuid.UUID) -> HttpResponse:
    """The morph between two of your results: a strip of frames, the animation, download links; the URL
    (with ``steps`` and ``method``) is its permalink."""
    a, b = _morph_request(request, first, second)
    try:
        steps, method = services.morph_options(request.GET.get("steps"), request.GET.get("method"))
    except ValidationError as problem:
        messages.error(request, problem.messages[0])
        return redirect("explore:morph", first=first, second=second)
    query = "?" + urlencode({"steps": steps, "method": method})
    base = reverse("explore:morph", args=[first, second])
    problem = None
    try:
        space = services.latent_space_active()
        for result in (a, b):
            services.reconstruction_latent(result, space)
    except services.LatentUnavailable as error:
        problem = str(error)
    return render(
        request,
        "explore/morph.html",
        {
            "a": a,
            "b": b,
            "steps": steps,
            "method": method,
            "max_steps": services.MORPH_MAX_STEPS,
            "problem": problem,
            "permalink": request.build_absolute_uri(base + query),
            "files": {name.replace(".", "_"): f"{base}{name}{query}" for name in MORPH_FILES},
            "thumbs": [presenters.file_url(r, "thumbnail") for r in (a, b)],
        },
    )


@login_or_token
@require_GET
def morph_file(request: HttpRequest, first: uuid.UUID, second: uuid.UUID, name: str) -> HttpResponse:
    """The morph's strip (PNG) or animation (WebP, GIF; ``?download=1`` for an attachment)."""
    if name not in MORPH_FILES:
        raise Http404("No such file.")
    a, b = _morph_request(request, first, second)
    try:
        steps, method = services.morph_options(request.GET.get("steps"), request.GET.get("method"))
        frames = services.morph_frames(a, b, steps, method)
    except ValidationError as problem:
        return HttpResponseBadRequest(problem.messages[0])
    except services.LatentUnavailable as problem:
        raise Http404(str(problem)) from None
    if name == "strip.png":
        data = services.morph_strip_png(frames)
    else:
        data = services.morph_animation(frames, name.rsplit(".", 1)[1])
    response = HttpResponse(data, content_type=MORPH_FILES[name])
    response["Cache-Control"] = "private, max-age=300"
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="morph-{method}-{steps}.{name.rsplit(".", 1)[1]}"'
    return response


# --- New cars ------------------------------------------------------------------------------------------------


@login_required
@require_GET
def new_cars(request: HttpRequest) -> HttpResponse:
    """Cars decoded from random latents; the seed and temperature in the URL make the page reproducible."""
    if not request.GET.get("seed"):
        query = {"seed": services.sample_seed_new(), "temperature": request.GET.get("temperature") or "1.0"}
        return redirect(f"{reverse('explore:new_cars')}?{urlencode(query)}")
    try:
        seed, temperature = services.sample_options(request.GET.get("seed"), request.GET.get("temperature"))
    except ValidationError as problem:
        messages.error(request, problem.messages[0])
        return redirect("explore:new_cars")
    return render(
        request,
        "explore/new_cars.html",
        {
            "seed": seed,
            "temperature": temperature,
            "cars": [
                {"index": i, "src": reverse("explore:new_car_image", args=[seed, i]) + f"?temperature={temperature}"}
                for i in range(services.SAMPLE_COUNT)
            ],
            "another": f"{reverse('explore:new_cars')}?{urlencode({'temperature': temperature})}",
        },
    )


@login_or_token
@require_GET
def new_car_image(request: HttpRequest, seed: int, index: int) -> HttpResponse:
    """One new car (PNG): sample ``index`` of ``seed`` at ``?temperature=``."""
    try:
        seed, temperature = services.sample_options(seed, request.GET.get("temperature"))
        image = services.sample_image(seed, temperature, index)
    except ValidationError as problem:
        return HttpResponseBadRequest(problem.messages[0])
    return _png_response(services.image_png(image), max_age=3600)


def _same_site_referer(request: HttpRequest) -> str | None:
    """The page the request came from (Referer), when it is one of this site's, else None: never a redirect to
    another site (``url_has_allowed_host_and_scheme``, as Django's login does with ``next``)."""
    referer = request.META.get("HTTP_REFERER")
    allowed = url_has_allowed_host_and_scheme(referer, {request.get_host()}, require_https=request.is_secure())
    return referer if referer and allowed else None


@login_required
@require_POST
def new_car_keep(request: HttpRequest) -> HttpResponse:
    """POST seed, temperature, index: keep that car in the gallery (marked as sampled)."""
    try:
        seed, temperature = services.sample_options(request.POST.get("seed"), request.POST.get("temperature"))
        index = int(request.POST.get("index", ""))
        kept = services.sample_keep(user=request.user, seed=seed, temperature=temperature, index=index)
    except UploadRateLimited as problem:
        messages.error(request, problem.messages[0])
        return redirect(_same_site_referer(request) or reverse("explore:new_cars"))
    except (ValidationError, ValueError) as problem:
        text = problem.messages[0] if isinstance(problem, ValidationError) else "index must be a whole number."
        messages.error(request, text)
        return redirect("explore:new_cars")
    messages.success(request, "Kept in your gallery.")
    return redirect("reconstruct:detail", public_id=kept.uuid)


# --- Sliders ---------------------------------------------------------------------------------------------------


@login_or_token
@require_GET
def edit_image(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """The result after a slider move: ``?offsets=0.5,0,-1`` (standard deviations per direction), PNG."""
    reconstruction = _get_done_for_user(request, public_id)
    try:
        image = services.reconstruction_edit_image(reconstruction, request.GET.get("offsets", ""))
    except ValidationError as problem:
        return HttpResponseBadRequest(problem.messages[0])
    except services.LatentUnavailable as problem:
        raise Http404(str(problem)) from None
    return _png_response(services.image_png(image), max_age=60)


@login_required
@require_POST
def edit_save(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """POST offsets: keep the slider result in the gallery and go to it."""
    reconstruction = _get_done_for_user(request, public_id)
    try:
        kept = services.reconstruction_edit_save(
            user=request.user, reconstruction=reconstruction, offsets=request.POST.get("offsets", "")
        )
    except (ValidationError, services.LatentUnavailable) as problem:
        messages.error(request, problem.messages[0] if isinstance(problem, ValidationError) else str(problem))
        return redirect("reconstruct:detail", public_id=public_id)
    messages.success(request, "The edited car is in your gallery.")
    return redirect("reconstruct:detail", public_id=kept.uuid)


# --- Sharing -----------------------------------------------------------------------------------------------------


@login_required
@require_POST
def share(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """POST ``action=share`` (make public, make a link) or ``action=unshare`` (private again: the link 404s)."""
    reconstruction = _get_done_for_user(request, public_id)
    if request.POST.get("action") == "unshare":
        services.reconstruction_unshare(reconstruction)
        messages.success(request, "This result is private again; its link no longer works.")
    else:
        services.reconstruction_share(reconstruction)
        messages.success(request, "Anyone with the link below can now see this result (not your name).")
    return redirect(reverse("reconstruct:detail", args=[public_id]) + "#share")


def _get_shared(token: str) -> Reconstruction:
    reconstruction = explore_selectors.reconstruction_get_shared(token)
    if reconstruction is None:
        raise Http404("No such page.")
    return reconstruction


@require_safe  # GET and HEAD: link-preview bots ask with HEAD first
def public_detail(request: HttpRequest, token: str) -> HttpResponse:
    """A shared result for anyone with the link: pictures and scores; never the owner or other results."""
    reconstruction = _get_shared(token)
    urls = {
        kind: reverse("explore:public_file", args=[token, kind]) if getattr(reconstruction, kind) else None
        for kind in PUBLIC_KINDS
    }
    preview = urls["thumbnail"] or urls["reconstruction"]
    response = render(
        request,
        "explore/public.html",
        {
            "r": reconstruction,
            "urls": urls,
            "scores": presenters.explain_scores(reconstruction),
            "page_url": request.build_absolute_uri(),
            "preview_url": request.build_absolute_uri(preview) if preview else None,
        },
    )
    response["X-Robots-Tag"] = "noindex"
    response["Referrer-Policy"] = "no-referrer"  # the link is the secret: not in Referer headers elsewhere
    return response


@require_safe
def public_file(request: HttpRequest, token: str, kind: str) -> HttpResponse:
    """A shared result's picture, streamed by the site (never a presigned URL that would outlive unsharing)."""
    reconstruction = _get_shared(token)
    if kind not in PUBLIC_KINDS or not getattr(reconstruction, kind):
        raise Http404("No such file.")
    field = getattr(reconstruction, kind)
    try:
        handle = field.storage.open(field.name, "rb")
    except FileNotFoundError:
        raise Http404("The file is missing from storage.") from None
    response = FileResponse(handle)
    response["Cache-Control"] = "no-cache"  # revalidate: once private, the picture is gone
    response["X-Robots-Tag"] = "noindex"
    return response


# --- The map --------------------------------------------------------------------------------------------------------


@login_required
@require_GET
def car_map(request: HttpRequest) -> HttpResponse:
    """Your cars placed by their latents; click two to morph between them."""
    try:
        result = services.reconstruction_map(request.user)
    except services.LatentUnavailable as problem:
        return render(request, "explore/map.html", {"problem": str(problem), "points": [], "left_out": []})
    points = [
        {
            "r": point.reconstruction,
            "x": f"{point.x * 100:.2f}",
            "y": f"{(1 - point.y) * 100:.2f}",
            "thumbnail": presenters.file_url(point.reconstruction, "thumbnail"),
        }
        for point in result.points
    ]
    return render(
        request,
        "explore/map.html",
        {
            "points": points,
            "left_out": result.left_out,
            "morph_base": reverse("explore:morph_pick"),
        },
    )
