"""Who the client is: one definition for the proxy's caps and the Backend API budgets."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from gateway.clients import MAX_CLIENT_KEY, ClientAddresses

LISTED = (ip_network("127.0.0.1/32"), ip_network("10.200.0.0/16"))
HOPS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.sampled_from(["10.200.0.5", "10.200.9.9", "127.0.0.1", "", " ", "not-an-ip", "x" * 99]),
)


def _listed(hop: str) -> bool:
    try:
        return any(ip_address(hop) in net for net in LISTED)
    except ValueError:
        return False


def _headers(*values: str) -> CIMultiDict[str]:
    return CIMultiDict(("X-Forwarded-For", v) for v in values)


def test_an_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    addresses = ClientAddresses(LISTED)
    assert addresses.of("192.0.2.1", _headers("203.0.113.9")) == "192.0.2.1"


def test_a_trusted_peer_names_the_right_most_address_that_is_not_a_listed_proxy() -> None:
    addresses = ClientAddresses(LISTED)
    headers = _headers("6.6.6.6, 203.0.113.9", "10.200.0.5")  # two header lines, one list
    assert addresses.of("127.0.0.1", headers) == "203.0.113.9"


def test_with_no_list_nobody_is_trusted_unless_every_caller_is() -> None:
    assert ClientAddresses(()).of("127.0.0.1", _headers("203.0.113.9")) == "127.0.0.1"
    every_caller = ClientAddresses((), trust_all_when_empty=True)
    assert every_caller.of("127.0.0.1", _headers("6.6.6.6, 203.0.113.9")) == "203.0.113.9"


@given(peer_listed=st.booleans(), hops=st.lists(HOPS, max_size=6))
def test_the_client_is_never_a_listed_proxy_while_an_unlisted_hop_exists(
    peer_listed: bool, hops: list[str]
) -> None:
    peer = "127.0.0.1" if peer_listed else "192.0.2.1"
    client = ClientAddresses(LISTED).of(peer, _headers(", ".join(hops)))
    assert len(client) <= MAX_CLIENT_KEY
    if not peer_listed:
        assert client == peer
        return
    unlisted = [h.strip() for h in hops if h.strip() and not _listed(h.strip())]
    if unlisted:
        assert client == unlisted[-1][:MAX_CLIENT_KEY]
    else:
        assert _listed(client)
