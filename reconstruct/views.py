"""Pages. Each view is a thin adapter around one service (reconstruct/services/) and the selectors."""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.defaults import bad_request as default_bad_request
from django.views.defaults import page_not_found as default_page_not_found
from django.views.defaults import server_error as default_server_error

from reconstruct import examples, presenters, selectors
from reconstruct.auth import BACKEND
from reconstruct.forms import SignupForm, UploadForm
from reconstruct.http import (
    LENGTH_REQUIRED,
    STORAGE_DOWN_MESSAGE,
    UNREADABLE_PART,
    authentication_required,
    body_too_large,
    declared_length,
    json_error,
    length_missing,
    part_unreadable,
    token_login,
    wants_html,
    wants_json,
)
from reconstruct.models import FILE_KINDS, ApiToken, Reconstruction
from reconstruct.registry.services import model_version_ensure_active, model_version_load_active
from reconstruct.services.accounts import (
    SignupRateLimited,
    account_signup_notify,
    account_signup_rate_check,
    password_reset_link_problem,
)
from reconstruct.services.reconstructions import (
    reconstruction_create,
    reconstruction_delete,
    reconstruction_is_stuck,
    reconstruction_retry,
)
from reconstruct.services.tokens import api_token_regenerate, api_token_revoke
from reconstruct.services.uploads import UploadRateLimited, reconstruction_rate_check, upload_size_error
from reconstruct.services.waiting import reconstruction_wait_new
from reconstruct.storage import StorageUnavailable
from reconstruct.throttle import lockout_response, throttle_failure, throttle_refusal

GALLERY_PAGE_SIZE = selectors.GALLERY_PAGE_SIZE


def _get_reconstruction_for_user(request: HttpRequest, public_id: uuid.UUID) -> Reconstruction:
    """The caller's reconstruction, or 404 (also when it is someone else's: its existence is private)."""
    reconstruction = selectors.reconstruction_get(request.user, public_id)
    if reconstruction is None:
        raise Http404("No such reconstruction.")
    return reconstruction


def home(request: HttpRequest) -> HttpResponse:
    """The home page: drawn example cars reconstructed by the active model, and the caller's latest results."""
    recent = selectors.reconstruction_cards(request.user)[:4] if request.user.is_authenticated else []
    version = model_version_ensure_active()
    shape = version.metadata.get("model", {})
    return render(
        request,
        "home.html",
        {
            "examples": list(enumerate(examples.EXAMPLES)),
            "recent": recent,
            # In the example images' URLs, so browsers fetch new ones after another model is activated.
            "model_version": version.name,
            # The images' width and height attributes: the page keeps their space while they load.
            "example_size": examples.SIZE,
            "model_size": (shape.get("width", examples.SIZE[0]), shape.get("height", examples.SIZE[1])),
        },
    )


@require_GET
@cache_control(public=True, max_age=600)
def example_image(request: HttpRequest, index: int, kind: str) -> HttpResponse:
    """A drawn example car (kind "input") or the active model's reconstruction of it."""
    if index >= len(examples.EXAMPLES) or kind not in ("input", "model_input", "reconstruction"):
        raise Http404("No such example.")
    _, model = model_version_load_active()
    example = examples.examples_for(model)[index]
    picture = {
        "input": example.picture,
        "model_input": example.result.model_input,
        "reconstruction": example.result.reconstruction,
    }[kind]
    response = HttpResponse(content_type="image/png")
    picture.save(response, "PNG")
    return response


class LogoutView(auth_views.LogoutView):
    """Django's logout (POST only, so that no link or image on another page can log anyone out), with a page for a
    GET (the address typed by hand) that asks, instead of Django's blank 405."""

    http_method_names = ["get", "head", "post", "options"]

    def get(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        return render(request, "registration/logout_confirm.html")


class PasswordResetView(auth_views.PasswordResetView):
    """Django's reset request, throttled (reconstruct/throttle.py): each request sends an email, so each counts
    as an attempt from the client's address and against the address asked for."""

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        email = str(request.POST.get("email", "")).strip().lower()
        account = f"password-reset:{email}" if email else None
        refused = throttle_refusal(request, account)
        if refused is not None:
            return refused
        throttle_failure(request, account)
        if getattr(request, "axes_locked_out", False):  # that was one too many: no email
            return lockout_response(request)
        return super().post(request, *args, **kwargs)


def signup(request: HttpRequest) -> HttpResponse:
    """Create an account and log in. At most SIGNUPS_PER_EMAIL_PER_HOUR new accounts may give one email address in
    an hour (``account_signup_rate_check``): each may email that address, and an attack review sent five such
    emails to one inbox in seconds."""
    if request.user.is_authenticated:
        return redirect("reconstruct:upload")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            account_signup_rate_check(form.cleaned_data["email"])
        except SignupRateLimited as problem:
            form.add_error("email", problem.messages[0])
            refused = render(request, "registration/signup.html", {"form": form}, status=429)
            refused["Retry-After"] = str(problem.retry_after)
            return refused
        user = form.save()
        account_signup_notify(user)
        login(request, user, backend=BACKEND)
        messages.success(request, f"Welcome, {user.username}! Upload a photo of a car to begin.")
        return redirect("reconstruct:upload")
    return render(request, "registration/signup.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
@never_cache  # Cache-Control: no-store: it shows a new API token once; no cache may keep it
def account(request: HttpRequest) -> HttpResponse:
    """The account page: API token (regenerate, revoke) and how to use the API."""
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "regenerate":
            # Shown once, on the next page view; only its hash is stored.
            request.session["new_api_token"] = api_token_regenerate(request.user)
        elif action == "revoke":
            api_token_revoke(request.user)
            messages.success(request, "Your API token was deleted; requests using it are now refused.")
        return redirect("account")
    return render(
        request,
        "account.html",
        {
            "token": ApiToken.objects.filter(user=request.user).first(),
            "new_token": request.session.pop("new_api_token", None),
            "api_url": request.build_absolute_uri(reverse("api:reconstructions")),
            "count": selectors.reconstruction_list(request.user).count(),
        },
    )


def _upload_page(request: HttpRequest, errors: list[str] | None = None, status: int = 200) -> HttpResponse:
    return render(request, "reconstruct/upload.html", {"errors": errors or []}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """The upload form; a valid photo becomes a reconstruction and the browser goes to its page."""
    if request.method == "GET":
        return _upload_page(request)
    try:
        reconstruction_rate_check(request.user)
    except UploadRateLimited as problem:
        return _rate_limited_page(request, problem)
    if length_missing(request):
        return _upload_page(request, [LENGTH_REQUIRED], status=411)
    if body_too_large(request):
        return _upload_page(request, [upload_size_error(declared_length(request))], status=413)
    try:
        form = UploadForm(request.POST, request.FILES)
        valid = form.is_valid()
    except (RequestDataTooBig, TooManyFilesSent, MultiPartParserError):
        return _upload_page(request, ["The upload could not be read. Please choose one photo and try again."], 400)
    if not valid and part_unreadable(request, "image"):
        return _upload_page(request, [UNREADABLE_PART], status=400)
    if not valid:
        status = 413 if form.has_error("image", code="too_large") else 400
        return _upload_page(request, [*form.non_field_errors(), *form.errors.get("image", [])], status=status)
    try:
        reconstruction = reconstruction_create(user=request.user, upload=form.cleaned_data["image"])
    except UploadRateLimited as problem:  # another tab got the last upload of the hour meanwhile
        return _rate_limited_page(request, problem)
    except StorageUnavailable:
        return _upload_page(request, [STORAGE_DOWN_MESSAGE], status=503)
    # A job that finishes within RECONSTRUCT_UPLOAD_WAIT s: its page arrives finished (one page instead of the
    # progress page, its long-poll and a reload). Otherwise the progress page, as before.
    reconstruction_wait_new(reconstruction, settings.RECONSTRUCT_UPLOAD_WAIT)
    return redirect("reconstruct:detail", public_id=reconstruction.uuid)


def _rate_limited_page(request: HttpRequest, problem: UploadRateLimited) -> HttpResponse:
    response = _upload_page(request, problem.messages, status=429)
    response["Retry-After"] = str(problem.retry_after)
    return response


@login_required
@require_GET
def detail(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """One of the caller's reconstructions: the photo, what the model saw, the reconstruction, the scores."""
    reconstruction = _get_reconstruction_for_user(request, public_id)
    return render(
        request,
        "reconstruct/detail.html",
        {
            "r": reconstruction,
            "urls": {kind: presenters.file_url(reconstruction, kind) for kind in FILE_KINDS},
            "download_url": presenters.file_url(reconstruction, "reconstruction", download=True),
            "scores": presenters.explain_scores(reconstruction),
            "box_rect": presenters.svg_rect(reconstruction.car_box),
            "frame_rect": presenters.svg_rect(reconstruction.frame),
            "car_check": presenters.car_check(reconstruction),
            "car_found": presenters.framing_json(reconstruction)["car_found"],
            "stuck": reconstruction_is_stuck(reconstruction),
            # The queue did not take its job at upload (Redis down): the sweep queues it when Redis answers.
            "not_queued": settings.RECONSTRUCT_MODE == "celery" and reconstruction.is_unqueued,
            "status_url": reverse("api:reconstruction", args=[reconstruction.uuid]),
            "reconstruct_mode": settings.RECONSTRUCT_MODE,
        },
    )


@login_required
@require_GET
def gallery(request: HttpRequest) -> HttpResponse:
    """The caller's reconstructions, 24 a page, newest first."""
    paginator = Paginator(selectors.GalleryCards(request.user), GALLERY_PAGE_SIZE)
    page = paginator.get_page(request.GET.get("page"))
    return render(request, "reconstruct/gallery.html", {"page": page, "cards": presenters.cards_html(request, page)})


@login_required
@require_http_methods(["GET", "POST"])
def delete(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """Confirm (GET), then delete (POST) one of the caller's reconstructions and its files."""
    reconstruction = _get_reconstruction_for_user(request, public_id)
    if request.method == "POST":
        reconstruction_delete(reconstruction)
        messages.success(request, f"Deleted “{reconstruction.original_name}” and its files.")
        return redirect("reconstruct:gallery")
    return render(
        request,
        "reconstruct/confirm_delete.html",
        {"r": reconstruction, "thumbnail_url": presenters.file_url(reconstruction, "thumbnail")},
    )


@login_required
@require_POST
def retry(request: HttpRequest, public_id: uuid.UUID) -> HttpResponse:
    """POST: queue a failed (or stuck) reconstruction again."""
    reconstruction = _get_reconstruction_for_user(request, public_id)
    try:
        reconstruction_retry(reconstruction)
    except ValidationError as error:
        messages.error(request, error.messages[0])
    return redirect("reconstruct:detail", public_id=reconstruction.uuid)


@require_GET
def reconstruction_file(request: HttpRequest, public_id: uuid.UUID, kind: str) -> HttpResponse:
    """A stored file of one of the caller's reconstructions (session or API token), or 404 (also for staff). Without
    credentials a browser opening it is sent to the login page; an API client (or an <img>) gets a JSON 401."""
    refused = token_login(request)
    if refused is not None:
        return refused
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path()) if wants_html(request) else authentication_required(request)
    # The owner's alone, like the result page: staff see other people's files in the admin (reconstruct/admin.py).
    reconstruction = selectors.reconstruction_files_get(request.user, public_id)
    if reconstruction is None:
        raise Http404("No such reconstruction.")
    return presenters.file_response(reconstruction, kind, download="download" in request.GET)


class PasswordResetConfirm(auth_views.PasswordResetConfirmView):
    """Django's page for a password-reset link that, when the link does not work, says why (expired, a login
    since, a changed password) instead of guessing, and offers a new link."""

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        if not context["validlink"]:
            token = self.kwargs.get("token", "")
            if token == self.reset_url_token:  # the form's URL: the link's token is in the session
                token = self.request.session.get(auth_views.INTERNAL_RESET_SESSION_TOKEN, "")
            context["problem"] = password_reset_link_problem(self.user, token)
        return context


class PasswordResetConfirmView(PasswordResetConfirm):
    """Django's "choose a new password" link, throttled: a link that does not verify counts as a failed attempt."""

    def dispatch(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        refused = throttle_refusal(request)
        if refused is not None:
            return refused
        response = super().dispatch(request, *args, **kwargs)
        if not self.validlink:
            throttle_failure(request)
        return response


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404: JSON for the API and clients that ask for it, the site's page otherwise."""
    if wants_json(request):
        return json_error("Not found.", 404)
    return default_page_not_found(request, exception)


UNREADABLE_REQUEST = (
    "The upload could not be read: its form data is malformed or its headers are too long (a file name of more "
    "than about 900 characters does this). Please give the file a shorter name and try again."
)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400 (413 for a body over Django's limits) for a request Django refused before any view could: a multipart
    body it cannot parse (a part header over its 1,024 bytes: a very long file name, raised while the CSRF check
    reads the form), too many form fields or files (DATA_UPLOAD_MAX_NUMBER_FIELDS / _FILES), a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE read as a form or JSON. Says what is wrong, as JSON (the API, or a client that asks
    for it) or on a page. Any other 400 (a disallowed host...) keeps Django's plain page, which needs nothing from
    the request."""
    problem = _unreadable_request(exception)
    if problem is None:
        return default_bad_request(request, exception)
    message, status, code = problem
    if wants_json(request):
        return json_error(message, status, code=code)
    return render(request, "400.html", {"message": message}, status=status)


def _unreadable_request(exception: Exception) -> tuple[str, int, str] | None:
    """(message, status, code) for a request body Django refused, or None for any other 400."""
    if isinstance(exception, RequestDataTooBig):
        return "The request is too large.", 413, "too_large"
    if isinstance(exception, (TooManyFieldsSent, TooManyFilesSent)):
        return (
            "The request has too many form fields, files or query parameters.",
            400,
            "bad_request",
        )
    if isinstance(exception, MultiPartParserError):
        return UNREADABLE_REQUEST, 400, "bad_request"
    return None


def server_error(request: HttpRequest) -> HttpResponse:
    """500: JSON for the API and clients that ask for it, the site's page otherwise."""
    if wants_json(request):
        return json_error("Something went wrong on our side. Please try again later.", 500)
    return default_server_error(request)
