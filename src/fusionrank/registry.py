"""Registries map names to implementations (encoders, fusion methods, losses, metrics).

An unknown name raises :class:`~fusionrank.errors.UnknownNameError` whose message
lists the valid names, generated from the registry so it never goes stale.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with a decorator for registration.

    >>> losses = Registry("loss")
    >>> @losses.register("mse")
    ... def mse(y, t): ...
    >>> losses.get("mse") is mse
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        def _add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = o
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
