"""Name-to-class registries with one error text (after timm's ``timm/models/_registry.py``).

Quantizers, attention gates, model names and networks are looked up by name from YAML configs.
Every lookup goes through a :class:`Registry`, so a typo always reads the same way:
``Unknown quantizer 'stesign'; use one of approx_sign, clamp, ...``.

.. code-block:: python

    from bnn_lightning import QUANTIZERS, Quantizer

    @QUANTIZERS.register("my_sign")
    class MySign(Quantizer): ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["Registry", "import_class", "unknown_name"]

T = TypeVar("T")
C = TypeVar("C")


def unknown_name(kind: str, value: object, names: Iterable[str], *alternatives: str) -> ValueError:
    """The one-sentence error for a ``kind`` that is not one of ``names`` (or ``alternatives``).

    >>> print(unknown_name("gate", "sse", ["se", "eca"]))
    Unknown gate 'sse'; use one of se, eca.
    """
    choices = ", ".join(names)
    if alternatives:
        choices = ", or ".join([choices, *alternatives] if choices else alternatives)
    return ValueError(f"Unknown {kind} {value!r}; use {'one of ' if names else ''}{choices}.")


def import_class(path: str, base: type) -> type | None:
    """The subclass of ``base`` at the dotted ``path`` (``"torch.nn.ReLU"``), or None."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        return None
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, base) else None


class Registry(dict[str, T]):
    """A ``{name: entry}`` dict whose :meth:`lookup` fails with :func:`unknown_name`.

    Args:
        kind: What the entries are, for the error ("quantizer", "attention", ...).
        entries: The initial entries.
        base: When set, :meth:`lookup` also accepts the dotted class path of a ``base`` subclass.
        example: An example class path shown in the error when ``base`` is set.
        alternatives: More accepted spellings named in the error (e.g. "null for none").
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T] | None = None,
        *,
        base: type | None = None,
        example: str | None = None,
        alternatives: tuple[str, ...] = (),
    ) -> None:
        super().__init__(entries or {})
        self.kind, self.base, self.example = kind, base, example
        self.alternatives = alternatives

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self)

    def register(self, name: str) -> Callable[[C], C]:
        """Decorator that registers a class (or function) under ``name``; returns it unchanged."""

        def add(entry: C) -> C:
            self[name] = entry  # type: ignore[assignment]
            return entry

        return add

    def error(self, value: object) -> ValueError:
        """The one-line error naming ``value`` and every valid choice."""
        extra = list(self.alternatives)
        if self.base is not None:
            name = self.base.__name__
            name = f"nn.{name}" if self.base.__module__.startswith("torch.nn") else name
            example = f" such as {self.example!r}" if self.example else ""
            extra.insert(0, f"the class path of an {name} subclass{example}")
        return unknown_name(self.kind, value, self.names(), *extra)

    def lookup(self, name: Any) -> T:
        """The entry registered as ``name``, else the class at class path ``name`` (with ``base``).

        Raises:
            ValueError: ``name`` is neither; the message lists the valid names.
        """
        if isinstance(name, str) and name in self:
            return self[name]
        if isinstance(name, str) and self.base is not None:
            cls = import_class(name, self.base)
            if cls is not None:
                return cls  # type: ignore[return-value]
        raise self.error(name)
