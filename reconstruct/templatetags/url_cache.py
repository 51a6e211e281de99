"""``{% url %}`` for every template (a builtin: TEMPLATES' ``builtins`` option), Django's own tag, with the URLs
that take no arguments remembered per process; ``reverse_remembered``, the memory it uses (also for a
reconstruction's URLs, ``presenters.reconstruction_url``).

Django's tag reverses its URL each time a page is rendered: about 40 µs of CPU a tag, and the navigation bar,
footer and gallery name eleven such URLs on every signed-in page (0.4 ms a gallery page, docs/performance.md, stop
29). A URL without arguments depends only on its name, the URL namespace the request is in, the script prefix
(the path the site is mounted at, e.g. Lambda's stage) and the URLconf, so it is remembered under those. A tag
with arguments, and a name that does not resolve, behave exactly as Django's.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.template import defaulttags
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse
from django.utils.html import conditional_escape

register = template.Library()

# (view name, arguments, current app, script prefix, URLconf) -> URL. Bounded, in case a template reverses names it
# reads from its context; the site's own templates and presenters name a few dozen.
_urls: dict[tuple[Any, ...], str] = {}
MAX_REMEMBERED = 1024


def reverse_remembered(view_name: str, args: tuple[Any, ...] = (), current_app: str | None = None) -> str:
    """``reverse(view_name, args=args, current_app=current_app)``, remembered per process under those, the script
    prefix and the URLconf (all a URL depends on). ``args`` must be hashable. Raises NoReverseMatch as ``reverse``
    does (a failure is not remembered)."""
    key = (view_name, args, current_app, get_script_prefix(), get_urlconf())
    url = _urls.get(key)
    if url is None:
        url = reverse(view_name, args=args, current_app=current_app)
        if len(_urls) >= MAX_REMEMBERED:
            _urls.clear()
        _urls[key] = url
    return url


def _current_app(context: template.Context) -> str | None:
    """The URL namespace to reverse in, as Django's ``URLNode.render`` finds it."""
    try:
        return context.request.current_app
    except AttributeError:
        try:
            return context.request.resolver_match.namespace
        except AttributeError:
            return None


class RememberedURLNode(defaulttags.URLNode):
    """Django's ``URLNode``; without arguments its URL is reversed once per name, namespace, prefix and URLconf."""

    def render(self, context: template.Context) -> str:
        if self.args or self.kwargs:
            return super().render(context)
        try:
            url = reverse_remembered(self.view_name.resolve(context), current_app=_current_app(context))
        except NoReverseMatch:
            if self.asvar is None:
                raise
            url = ""
        if self.asvar:
            context[self.asvar] = url
            return ""
        return conditional_escape(url) if context.autoescape else url


@register.tag
def url(parser: template.base.Parser, token: template.base.Token) -> RememberedURLNode:
    """``{% url 'name' arg1 arg2 [as var] %}``, as Django's tag (its parsing); see the module's docstring."""
    node = defaulttags.url(parser, token)
    return RememberedURLNode(node.view_name, node.args, node.kwargs, node.asvar)
