"""One registry per kind of plug-in (methods, strategies, codecs, runtimes, partitioners, ...).

Adding a plug-in is adding a module and one ``@REGISTRY.register("name")`` line; an unknown name
raises a :class:`~fedfm.errors.ConfigError` that lists the registered names. A plug-in whose
config is a ``Spec`` dataclass gets its registered name on that class (``Spec.plugin_name``), so
a spec read from a config says which plug-in it configures without a reverse look-up.

Every registry is also listed in :data:`REGISTRIES` by its kind, so that the config parser can
find the plug-ins of a section without importing the packages that define them (they import the
config: importing them from it would be a cycle).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fedfm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from a name to a plug-in class or factory of one kind."""

    def __init__(self, kind: str, field: str) -> None:
        self.kind = kind  # e.g. "strategy"
        self.field = field  # the config key that names it, e.g. "strategy.name"
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # name → the module that registered it
        REGISTRIES[kind] = self

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            module = getattr(item, "__module__", "?")
            if name in self._items:
                raise ConfigError(
                    f"{module} registers the {self.kind} {name!r}, which "
                    f"{self._origin[name]} already registered; choose another name"
                )
            self._items[name] = item
            self._origin[name] = module
            spec = getattr(item, "Spec", None)
            if isinstance(spec, type):
                spec.plugin_name = name
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), sorted(self._items), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{self.field} = {name!r} is not a known {self.kind}{hint}; "
                f"allowed: {', '.join(sorted(self._items))}"
            ) from None

    def of(self, spec: Any) -> T:
        """The plug-in that ``spec`` (an instance of its ``Spec``) configures."""
        return self.get(spec_name(spec))

    def build(self, spec: Any, *args: Any, **kwargs: Any) -> Any:
        """The plug-in configured by ``spec``, built with ``(spec, *args, **kwargs)``."""
        return self.of(spec)(spec, *args, **kwargs)

    def names(self, where: Callable[[T], bool] | None = None) -> list[str]:
        """The registered names (those whose plug-in satisfies ``where``, if given)."""
        return sorted(n for n, item in self._items.items() if where is None or where(item))

    def __contains__(self, name: object) -> bool:
        return name in self._items


def spec_name(spec: Any) -> str:
    """The registered name of the plug-in a spec configures."""
    name = getattr(type(spec), "plugin_name", None)
    if name is None:
        raise TypeError(f"{type(spec).__name__} is not the Spec of a registered plug-in")
    return name


REGISTRIES: dict[str, Registry[Any]] = {}
