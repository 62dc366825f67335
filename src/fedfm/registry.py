"""One registry per kind of plug-in (methods, strategies, codecs, runtimes, partitioners, ...).

Adding a plug-in is adding a module and one ``@REGISTRY.register("name")`` line; an unknown name
raises a :class:`~fedfm.errors.ConfigError` that lists the registered names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from fedfm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a name to a plug-in class or factory of one kind."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind  # e.g. "strategy"
        self.field = field  # the config key that names it, e.g. "strategy.name"
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"{self.field} = {name!r} is not a known {self.kind}; "
                f"allowed: {', '.join(sorted(self._items))}"
            ) from None

    def name_of(self, spec_type: type) -> str:
        """The registered name whose plug-in has ``Spec`` = ``spec_type``."""
        for name, item in self._items.items():
            if getattr(item, "Spec", None) is spec_type:
                return name
        raise KeyError(f"no {self.kind} has the spec {spec_type.__name__}")

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
