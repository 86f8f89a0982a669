"""A faster ``__init__`` for the frozen dataclasses built on every guarded call.

A frozen dataclass's generated ``__init__`` sets each field through ``object.__setattr__``
(its own ``__setattr__`` raises), which costs about 90 ns a field: building the call's
``CallSpec``, ``Usage``, ``Outcome`` and ``CallEvent`` took over a microsecond each. For a
frozen dataclass without slots, ``fast_init`` swaps in an ``__init__`` with the same
signature that writes the fields straight into the instance ``__dict__``, at about half the
cost. Everything else stays the dataclass's own: equality, hashing, ``repr``,
``dataclasses.replace`` and ``FrozenInstanceError`` on assignment.

>>> from dataclasses import dataclass
>>> @fast_init
... @dataclass(frozen=True)
... class Point:
...     x: int
...     y: int = 0
>>> Point(1)
Point(x=1, y=0)
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["fast_init"]


def fast_init(cls: type[T]) -> type[T]:
    """Give the frozen dataclass ``cls`` (no slots, no ``InitVar``) a faster ``__init__``."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not params.frozen or "__slots__" in cls.__dict__:
        raise TypeError(f"fast_init needs a frozen dataclass without slots, not {cls.__name__}")
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body = ["    _d = self.__dict__"]
    for f in fields:
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            param = f"{f.name}=_default_{f.name}"
            value = f.name
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            param = f"{f.name}=_FACTORY"
            value = f"_factory_{f.name}() if {f.name} is _FACTORY else {f.name}"
        else:
            param = f.name
            value = f.name
        (keyword if f.kw_only else positional).append(param)
        body.append(f"    _d[{f.name!r}] = {value}")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init and f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            body.append(f"    _d[{f.name!r}] = _default_{f.name}")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    params_text = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = f"def __init__({params_text}) -> None:\n" + "\n".join(body)
    exec(source, namespace)  # the way dataclasses builds its own __init__
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


class _Factory:
    """Marks a parameter filled by its field's default factory (shown as dataclasses does)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()
