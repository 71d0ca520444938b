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
    asked: list[list[str]] = []

    def never(obj: list[str]) -> bool:
        asked.append(obj)
        return False

    assert lists.of(mutable, lambda obj: obj[0], remember=never) == "x"
    mutable[0] = "y"  # not remembered: worked out again
    assert lists.of(mutable, lambda obj: obj[0], remember=never) == "y"
    assert asked == [mutable, mutable]  # asked once per value worked out
    kept = ["k"]
    assert lists.of(kept, lambda obj: obj[0], remember=lambda obj: True) == "k"
    kept[0] = "changed"  # remembered: the first value, without being asked again
    assert lists.of(kept, lambda obj: obj[0], remember=never) == "k"
    assert len(asked) == 2
