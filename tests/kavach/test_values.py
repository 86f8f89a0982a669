"""fast_init: the hot frozen values build faster and behave exactly like frozen dataclasses."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field

import pytest

from kavach import CallSpec, Usage
from kavach._values import fast_init
from kavach.events import CallEvent
from kavach.stream import Outcome


@fast_init
@dataclass(frozen=True)
class Sample:
    name: str
    count: int = 1
    tags: dict[str, str] = field(default_factory=dict)
    flag: bool = field(default=False, kw_only=True)


@dataclass(frozen=True)
class Reference:
    name: str
    count: int = 1
    tags: dict[str, str] = field(default_factory=dict)
    flag: bool = field(default=False, kw_only=True)


def test_same_signature_defaults_and_behaviour_as_the_dataclass_init() -> None:
    ours, theirs = inspect.signature(Sample.__init__), inspect.signature(Reference.__init__)
    assert [(p.name, p.kind) for p in ours.parameters.values()] == [
        (p.name, p.kind) for p in theirs.parameters.values()
    ]
    assert str(ours.parameters["tags"].default) == "<factory>"
    a, b = Sample("x"), Sample("x")
    assert a == b and a is not b
    assert a.tags == {} and a.tags is not b.tags  # a fresh dict per instance
    assert Sample("x", 2, {"k": "v"}, flag=True) == Sample(
        name="x", count=2, tags={"k": "v"}, flag=True
    )
    with pytest.raises(TypeError):
        Sample("x", 2, {}, True)  # type: ignore[misc]  # flag is keyword-only
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.count = 3  # type: ignore[misc]
    assert dataclasses.replace(a, count=5) == Sample("x", 5)
    assert pickle.loads(pickle.dumps(a)) == a
    assert repr(a) == "Sample(name='x', count=1, tags={}, flag=False)"


def test_post_init_runs() -> None:
    @fast_init
    @dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("n must not be negative")

    assert Checked(1).n == 1
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)


def test_refuses_what_it_cannot_speed_up() -> None:
    with pytest.raises(TypeError, match="frozen dataclass without slots"):
        fast_init(dataclass(frozen=True, slots=True)(type("S", (), {"__annotations__": {}})))
    with pytest.raises(TypeError, match="frozen dataclass without slots"):
        fast_init(dataclass(type("M", (), {"__annotations__": {}})))


@pytest.mark.parametrize("cls", [CallSpec, Usage, Outcome, CallEvent])
def test_the_hot_values_take_every_field_as_the_dataclass_would(cls: type) -> None:
    fields = [f for f in dataclasses.fields(cls) if f.init]
    init = cls.__dict__["__init__"]
    params = list(inspect.signature(init).parameters.values())[1:]
    assert [p.name for p in params] == [f.name for f in fields]
    for p, f in zip(params, fields, strict=True):
        if f.default is not dataclasses.MISSING:
            assert p.default == f.default
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_usage_and_callspec_stay_immutable_values() -> None:
    usage = Usage(input_tokens=10, output_tokens=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.input_tokens = 0  # type: ignore[misc]
    assert {usage, Usage(input_tokens=10, output_tokens=2)} == {usage}
    spec = CallSpec(provider="openai", model="gpt-4o")
    assert spec.tags == {} and spec.operation == "chat"
