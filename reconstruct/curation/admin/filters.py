"""List filters of the training set's admin page, each worded for people."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest


class _YesNoFilter(admin.SimpleListFilter):
    """A filter on one boolean check, worded for people."""

    field = ""
    lookup_choices = (("yes", "Yes"), ("no", "No"))

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return self.lookup_choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(**{self.field: self.value() == "yes"})
        return queryset


class NearDuplicateFilter(admin.SimpleListFilter):
    title = "near duplicate"
    parameter_name = "near_duplicate"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return (("yes", "Yes"), ("no", "No"))

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in ("yes", "no"):
            return queryset.filter(near_duplicate_of__isnull=self.value() == "no")
        return queryset


class TooSmallFilter(_YesNoFilter):
    title = "too small"
    parameter_name = "too_small"
    field = "too_small"


class GreyscaleFilter(_YesNoFilter):
    title = "greyscale"
    parameter_name = "greyscale"
    field = "greyscale"


class ExtremeAspectFilter(_YesNoFilter):
    title = "extreme aspect ratio"
    parameter_name = "extreme_aspect"
    field = "extreme_aspect"


class CarLikenessFilter(admin.SimpleListFilter):
    title = "car-likeness"
    parameter_name = "car_likeness"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return (
            ("low", f"Low (under {settings.CURATION_LOW_CAR_LIKENESS:g})"),
            ("mid", "Medium"),
            ("high", "Typical of the training cars (0.5 and over)"),
            ("none", "Not scored"),
        )

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        low = settings.CURATION_LOW_CAR_LIKENESS
        if self.value() == "low":
            return queryset.filter(car_likeness__lt=low)
        if self.value() == "mid":
            return queryset.filter(car_likeness__gte=low, car_likeness__lt=0.5)
        if self.value() == "high":
            return queryset.filter(car_likeness__gte=0.5)
        if self.value() == "none":
            return queryset.filter(car_likeness__isnull=True)
        return queryset


class VersionFilter(admin.SimpleListFilter):
    """Current versions by default: the older version of a flipped photo is history, not data."""

    title = "version"
    parameter_name = "version"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> tuple[tuple[str, str], ...]:
        return (("all", "All, older versions too"), ("old", "Older versions only"), ("flipped", "Flipped versions"))

    def choices(self, changelist: Any) -> Any:
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Current",
        }
        for lookup, title in self.lookup_choices:
            yield {
                "selected": self.value() == lookup,
                "query_string": changelist.get_query_string({self.parameter_name: lookup}),
                "display": title,
            }

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "all":
            return queryset
        if self.value() == "old":
            return queryset.filter(is_current=False)
        if self.value() == "flipped":
            return queryset.filter(derivation="flip")
        return queryset.filter(is_current=True)
