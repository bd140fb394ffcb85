"""Server addresses and the token, from arguments or RUNQ_SERVER / RUNQ_TOKEN."""

from __future__ import annotations

import pytest

from runq.protocol.address import format_address, parse_address, server_addresses, server_token


def test_parse_address_forms() -> None:
    assert parse_address("example.org:7800") == ("example.org", 7800)
    assert parse_address("example.org") == ("example.org", 7700)
    assert parse_address(":7800") == ("127.0.0.1", 7800)
    assert parse_address("[::1]:7801") == ("::1", 7801)
    assert parse_address("[::1]") == ("::1", 7700)
    assert parse_address("::1") == ("::1", 7700)  # bare IPv6: the default port (a port needs the brackets)
    assert parse_address("fe80::1:2") == ("fe80::1:2", 7700)
    assert parse_address(" host:1 ") == ("host", 1)


def test_a_url_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match=r"give HOST:PORT, not a URL \(that is the HTTP API"):
        parse_address("http://127.0.0.1:7701")
    with pytest.raises(ValueError, match="not a URL$"):
        parse_address("tcp://127.0.0.1:7700")


@pytest.mark.parametrize("bad", ["host:http", "host:70000", "host:-1"])
def test_parse_address_refuses_a_bad_port(bad: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_address(bad)


def test_format_address_round_trips() -> None:
    for host, port in (("127.0.0.1", 7700), ("::1", 7701)):
        assert parse_address(format_address(host, port)) == (host, port)


def test_server_addresses_reads_runq_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNQ_SERVER", raising=False)
    assert server_addresses() == [("127.0.0.1", 7700)]
    monkeypatch.setenv("RUNQ_SERVER", "a:1, b:2,")
    assert server_addresses() == [("a", 1), ("b", 2)]
    assert server_addresses("c:3") == [("c", 3)]  # an argument wins over the environment
    assert server_addresses(["d:4,e:5", "f:6"]) == [("d", 4), ("e", 5), ("f", 6)]
    with pytest.raises(ValueError, match="no server address"):
        server_addresses(" , ")


def test_server_token_reads_runq_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNQ_TOKEN", "secret")
    assert server_token() == "secret"
    assert server_token("mine") == "mine"
    monkeypatch.setenv("RUNQ_TOKEN", "")
    assert server_token() is None
