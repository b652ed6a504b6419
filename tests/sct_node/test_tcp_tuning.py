"""The node's TCP tuning of associations it requests: acknowledgements at once (sct_node.node.receive)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from sct_node.node.receive import acknowledge_at_once

needs_quickack = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux-only")


@needs_quickack
def test_every_read_of_a_requested_association_acknowledges_at_once():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    seen: list[int] = []

    def read(nr_bytes: int) -> bytearray:
        seen.append(client.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK))
        return bytearray(client.recv(nr_bytes))

    transport = SimpleNamespace(socket=client, recv=read)
    event = SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=transport)))
    try:
        acknowledge_at_once(event)  # type: ignore[arg-type]
        assert transport.recv is not read
        for payload in (b"first", b"second"):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)  # as the kernel leaves it again
            peer.sendall(payload)
            assert transport.recv(len(payload)) == payload
        assert seen == [1, 1]
    finally:
        for s in (client, peer, server):
            s.close()


def test_an_association_without_a_socket_is_left_alone():
    transport = SimpleNamespace(socket=None, recv=len)
    acknowledge_at_once(SimpleNamespace(assoc=SimpleNamespace(dul=SimpleNamespace(socket=transport))))  # type: ignore[arg-type]
    assert transport.recv is len
