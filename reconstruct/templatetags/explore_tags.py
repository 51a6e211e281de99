"""``{% latent_tools r %}``: the sliders, the share box and the morph link under a finished result."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

from reconstruct.explore import services
from reconstruct.models import Reconstruction

register = template.Library()


@register.inclusion_tag("explore/_latent_tools.html", takes_context=True)
def latent_tools(context: dict[str, Any], reconstruction: Reconstruction) -> dict[str, Any]:
    """What the tools under a result page need: its directions (or why there are none) and its public link."""
    request = context["request"]
    directions: list[dict[str, Any]] = []
    problem = None
    if reconstruction.status == Reconstruction.Status.DONE:
        space = services.latent_space_active()
        # Without encoding anything: a photo that needs it is encoded by the first slider move.
        problem = services.reconstruction_latent_problem(reconstruction, space)
        if problem is None:
            directions = space.directions()
            if not directions:
                problem = "The active model was exported without principal directions, so it has no sliders."
    token = reconstruction.share_token
    return {
        "r": reconstruction,
        "csrf_token": context.get("csrf_token"),
        "LATENT_SIZE": context.get("LATENT_SIZE"),  # an inclusion tag's template sees only what it is given
        "directions": [{**d, "share": f"{d['explained_variance_ratio']:.1%}"} for d in directions],
        "max_offset": services.MAX_OFFSET,
        "problem": problem,
        # The first picture is decoded like the ones that follow it (the whole frame).
        "image_url": reverse("explore:edit_image", args=[reconstruction.uuid]) + "?offsets=",
        "public_url": request.build_absolute_uri(reverse("explore:public", args=[token])) if token else None,
    }
