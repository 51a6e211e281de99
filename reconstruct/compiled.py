"""Read queries compiled once per database connection, for the requests every upload makes.

Django compiles a QuerySet's SQL anew each time it is evaluated: for the one-row lookups an upload's round makes
(the API token with its user, the reconstruction with its model version's name, the file view's row) compiling
costs four to ten times running the SQL on SQLite, 0.2 to 0.7 ms of CPU against 0.05 to 0.08 (measured with
``time.process_time``, 3,000 lookups each; docs/performance.md, stop 28). ``CompiledQuery`` compiles a query the
ORM builds once per connection, keeps the compiler (its SQL, its select list, its converters) and runs the same
SQL with new parameters, making model instances the way Django's own ``ModelIterable`` does: the same objects,
``select_related`` included, as evaluating the QuerySet (``tests/reconstruct/test_compiled.py`` compares them on
SQLite and PostgreSQL).

Only for queries whose shape never changes: the values are the only parameters, and each is declared with the
field it is compared to, so that it is prepared for the database as the ORM prepares it (a UUID is 32 hex digits
on SQLite, a ``uuid`` on PostgreSQL). The first compile checks that the ORM's parameters are exactly the declared
values in that order, so a query whose parameters the ORM orders differently fails at once, not with wrong rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.db.models import Field, Model, QuerySet
from django.db.models.query import get_related_populators

M = TypeVar("M", bound=Model)
_CACHE_ATTRIBUTE = "_carsite_compiled"


@dataclass(frozen=True)
class _Plan:
    sql: str
    compiler: Any  # django.db.models.sql.compiler.SQLCompiler, after as_sql(): select, klass_info set
    converters: dict
    init_list: list[str]
    fields: tuple[int, int]  # the model's own columns: row[start:end]
    populators: list


class CompiledQuery(Generic[M]):
    """``build(*examples)`` compiled once per connection, then run with other values of the same fields.

    ``build``: a function of the values returning the QuerySet (a slice such as ``[:1]`` is part of its shape;
    annotations, ``prefetch_related`` and known related objects are refused). ``params``: for each value, in the
    order the ORM puts them in the SQL, the model field it is compared to and an example value (used for the one
    compile; the examples must differ from one another). Raises ``ImproperlyConfigured`` at the first run when the
    compiled parameters are not the prepared examples in that order.
    """

    def __init__(self, build: Callable[..., QuerySet[M]], params: Sequence[tuple[Field, object]]) -> None:
        self._build = build
        self._fields = tuple(field for field, _example in params)
        self._examples = tuple(example for _field, example in params)
        self._model: type[M] | None = None

    def _connection(self) -> Any:
        """This thread's connection to the database the model is read from."""
        if self._model is None:
            self._model = self._build(*self._examples).model
        return connections[router.db_for_read(self._model)]

    def _cache(self, connection: Any) -> dict[tuple[CompiledQuery, str], Any]:
        """What this connection compiled, kept on the connection object itself (it is the thread's own): freed with
        it, and never used by another connection."""
        return connection.__dict__.setdefault(_CACHE_ATTRIBUTE, {})

    def _plan(self, connection: Any) -> _Plan:
        cache = self._cache(connection)
        plan = cache.get((self, "rows"))
        if plan is not None:
            return plan
        queryset = self._build(*self._examples)
        if queryset.query.annotation_select or queryset._known_related_objects or queryset._prefetch_related_lookups:
            raise ImproperlyConfigured("CompiledQuery: annotations, known related objects and prefetch are not kept")
        compiler = queryset.query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        self._check(connection, params)
        select, klass_info = compiler.select, compiler.klass_info
        start, end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        plan = _Plan(
            sql=sql,
            compiler=compiler,
            converters=compiler.get_converters([s[0] for s in select[: compiler.col_count]]),
            init_list=[s[0].target.attname for s in select[start:end]],
            fields=(start, end),
            populators=get_related_populators(klass_info, select, connection.alias),
        )
        cache[(self, "rows")] = plan
        return plan

    def _check(self, connection: Any, params: Sequence[object]) -> None:
        expected = self._prepare(connection, self._examples)
        if any(a == b for i, a in enumerate(expected) for b in expected[i + 1 :]):
            raise ImproperlyConfigured(f"CompiledQuery: the examples must differ once prepared, not {expected!r}")
        if list(params) != list(expected):
            raise ImproperlyConfigured(
                f"CompiledQuery: the ORM's parameters {list(params)!r} are not the declared values {expected!r}"
            )

    def _prepare(self, connection: Any, values: Sequence[object]) -> list[object]:
        return [field.get_db_prep_value(value, connection) for field, value in zip(self._fields, values, strict=True)]

    def list(self, *values: object) -> list[M]:
        """The rows for ``values`` (one per declared parameter), as model instances."""
        connection = self._connection()
        alias = connection.alias
        plan = self._plan(connection)
        with connection.cursor() as cursor:
            cursor.execute(plan.sql, self._prepare(connection, values))
            rows = cursor.fetchall()
        if plan.converters:
            rows = list(plan.compiler.apply_converters(rows, plan.converters))
        model_cls = plan.compiler.klass_info["model"]
        start, end = plan.fields
        objects = []
        for row in rows:
            obj = model_cls.from_db(alias, plan.init_list, row[start:end])
            for populator in plan.populators:
                populator.populate(row, obj)
            objects.append(obj)
        return objects

    def count(self, *values: object) -> int:
        """How many rows ``values`` select: ``SELECT COUNT(*)`` over the query's own SQL (its ordering dropped),
        compiled once per connection like the rows. Raises ``ImproperlyConfigured`` for a sliced query."""
        connection = self._connection()
        cache = self._cache(connection)
        sql = cache.get((self, "count"))
        if sql is None:
            queryset = self._build(*self._examples)
            if queryset.query.is_sliced:
                raise ImproperlyConfigured("CompiledQuery.count() counts a query without a slice")
            inner_sql, params = queryset.order_by().values("pk").query.get_compiler(connection=connection).as_sql()
            self._check(connection, params)
            sql = f"SELECT COUNT(*) FROM ({inner_sql}) counted"
            cache[(self, "count")] = sql
        with connection.cursor() as cursor:
            cursor.execute(sql, self._prepare(connection, values))
            return cursor.fetchone()[0]

    def first(self, *values: object) -> M | None:
        """The first row for ``values``, or None."""
        found = self.list(*values)
        return found[0] if found else None
