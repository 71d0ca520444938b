"""Request ids: 32 hex digits from the OS's CSPRNG, never repeated, never shared with a fork."""

from __future__ import annotations

import os
import re

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.http.headers import new_request_id, request_id

_HEX32 = re.compile(r"[0-9a-f]{32}")


def test_ids_are_32_hex_digits_and_never_repeat_across_many_reads() -> None:
    ids = [new_request_id() for _ in range(5_000)]  # many refills of the 256-id pool
    assert all(_HEX32.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_never_hands_out_its_parents_next_ids() -> None:
    new_request_id()  # the pool holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "".join(new_request_id() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(new_request_id() for _ in range(8))
    assert len(child) == len(parent) == 8 * 32
    assert {child[i:i + 32] for i in range(0, 256, 32)}.isdisjoint(
        {parent[i:i + 32] for i in range(0, 256, 32)})


def test_a_client_id_is_kept_only_when_the_whole_value_is_well_formed() -> None:
    def given(value: str) -> str:
        return request_id(CIMultiDictProxy(CIMultiDict({"X-Request-Id": value})))

    assert given("client-id.0001:a") == "client-id.0001:a"
    for bad in ("client-id-0001\n", "client-id-0001\r", "short", "x" * 129, "id with space"):
        assert _HEX32.fullmatch(given(bad)), bad  # replaced, whatever follows a good prefix
