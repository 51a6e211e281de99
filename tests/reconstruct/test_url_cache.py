"""URLs remembered: the ``{% url %}`` builtin (reconstruct/templatetags/url_cache.py) renders what Django's own tag
renders; ``presenters.reconstruction_url`` returns what ``reverse`` returns."""

from __future__ import annotations

from typing import Any

import pytest
from django.template import Context, Engine, engines
from django.test import RequestFactory
from django.urls import NoReverseMatch, reverse, set_script_prefix

from reconstruct import presenters
from reconstruct.templatetags import url_cache

TAGS = "{% url 'home' %}|{% url 'reconstruct:gallery' %}|{% url 'admin:index' %}|{% url 'api:reconstruction' id %}"


def _django_tag(source: str, context: dict[str, Any]) -> str:
    return Engine(libraries={}).from_string(source).render(Context(context))


def test_the_site_s_templates_use_it_and_it_renders_django_s_urls() -> None:
    template = engines["django"].from_string(TAGS)
    assert type(template.template.nodelist[0]) is url_cache.RememberedURLNode
    context = {"id": "0b6cfa3e-53b5-4d9b-8fd9-0a7c0c1f9b2e"}
    expected = _django_tag(TAGS, context)
    assert "/gallery/" in expected
    assert template.render(context) == expected == template.render(context)  # the second time remembered


def test_a_script_prefix_is_part_of_the_remembered_url() -> None:
    template = engines["django"].from_string("{% url 'reconstruct:gallery' %}")
    first = template.render({})
    try:
        set_script_prefix("/production/")
        assert template.render({}) == "/production" + first
    finally:
        set_script_prefix("/")
    assert template.render({}) == first


def test_as_a_variable_and_unknown_names_behave_as_django_s() -> None:
    source = "{% url 'no-such-page' as where %}[{{ where }}]{% url 'home' as h %}{{ h }}"
    template = engines["django"].from_string(source)
    assert template.render({}) == "[]/"
    with pytest.raises(NoReverseMatch):
        engines["django"].from_string("{% url 'no-such-page' %}").render({})


def test_the_request_s_namespace_picks_the_instance(rf: RequestFactory) -> None:
    template = engines["django"].from_string("{% url 'admin:index' %}")
    request = rf.get("/")
    request.current_app = "admin"
    assert template.render({}, request) == _django_tag("{% url 'admin:index' %}", {}) == "/admin/"


@pytest.mark.parametrize("prefix", ["/", "/production/"])
def test_a_reconstruction_s_urls_are_reverse_s(prefix: str) -> None:
    import uuid

    set_script_prefix(prefix)
    try:
        for public_id in (uuid.uuid4(), uuid.uuid4(), uuid.UUID(int=0)):
            for name, args in [
                ("reconstruct:detail", ()),
                ("api:reconstruction", ()),
                ("api:retry", ()),
                ("reconstruct:file", ("thumbnail",)),
                ("reconstruct:file", ("reconstruction",)),
            ]:
                expected = reverse(name, args=[public_id, *args])
                assert expected.startswith(prefix)
                assert presenters.reconstruction_url(name, public_id, *args) == expected
    finally:
        set_script_prefix("/")
    public_id = uuid.uuid4()
    as_text = presenters.reconstruction_url("reconstruct:detail", str(public_id))  # type: ignore[arg-type]
    assert as_text == reverse("reconstruct:detail", args=[public_id])
    with pytest.raises(NoReverseMatch):
        presenters.reconstruction_url("reconstruct:detail", "not-a-uuid")  # type: ignore[arg-type]
    with pytest.raises(NoReverseMatch):
        presenters.reconstruction_url("no-such-page", uuid.uuid4())
