"""``{% url %}`` for every template (a builtin: TEMPLATES' ``builtins`` option), Django's own tag, with the URLs
that take no arguments remembered per process.

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

# (view name, current app, script prefix, URLconf) -> URL. Bounded, in case a template reverses names it reads
# from its context; the site's own templates name a few dozen.
_urls: dict[tuple[Any, ...], str] = {}
MAX_REMEMBERED = 1024


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
        view_name = self.view_name.resolve(context)
        current_app = _current_app(context)
        key = (view_name, current_app, get_script_prefix(), get_urlconf())
        url = _urls.get(key)
        if url is None:
            try:
                url = reverse(view_name, current_app=current_app)
            except NoReverseMatch:
                if self.asvar is None:
                    raise
                url = ""
            else:
                if len(_urls) >= MAX_REMEMBERED:
                    _urls.clear()
                _urls[key] = url
        if self.asvar:
            context[self.asvar] = url
            return ""
        return conditional_escape(url) if context.autoescape else url


@register.tag
def url(parser: template.base.Parser, token: template.base.Token) -> RememberedURLNode:
    """``{% url 'name' arg1 arg2 [as var] %}``, as Django's tag (its parsing); see the module's docstring."""
    node = defaulttags.url(parser, token)
    return RememberedURLNode(node.view_name, node.args, node.kwargs, node.asvar)
