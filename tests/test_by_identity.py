"""ByIdentity: values worked out once per object, never handed to another object."""

from __future__ import annotations

from gateway.by_identity import ByIdentity


def test_a_value_is_worked_out_once_per_object_and_never_shared_by_equal_objects() -> None:
    calls: list[tuple[str, ...]] = []

    def work(obj: tuple[str, ...]) -> str:
        calls.append(obj)
        return "-".join(obj)

    memo: ByIdentity[tuple[str, ...], str] = ByIdentity(2)
    first, equal = ("a", "b"), tuple(["a", "b"])
    assert memo.of(first, work) == memo.of(first, work) == "a-b"
    assert len(calls) == 1
    assert memo.of(equal, work) == "a-b" and calls[-1] is equal  # its own entry
    assert memo.of(("c",), work) == "c"  # full: everything forgotten, then kept
    assert memo.of(first, work) == "a-b" and len(calls) == 4
    lists: ByIdentity[list[str], str] = ByIdentity(2)
    mutable = ["x"]
    assert lists.of(mutable, lambda obj: obj[0], remember=False) == "x"
    mutable[0] = "y"  # not remembered: worked out again
    assert lists.of(mutable, lambda obj: obj[0], remember=False) == "y"
