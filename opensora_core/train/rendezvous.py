"""torchrun whose multi-node rendezvous fails within a timeout and says which nodes are missing.

`python -m opensora_core.train.rendezvous <torchrun arguments>` is torchrun (`torch.distributed.run.main`)
with one more rendezvous backend, `opensora-c10d`: torch's c10d rendezvous (a TCPStore at the endpoint,
hosted by node 0), plus a record in that store of every node that arrived, so that a rendezvous that times
out names the endpoint, the nodes expected and the nodes seen:

    rendezvous at 10.0.0.1:29400 timed out after 300 s: 1 of 2 nodes joined (node-a pid 4242, store host).
    Start the missing node(s) with the same --rdzv-endpoint, or raise OPENSORA_RDZV_TIMEOUT_S.

The launcher (launcher.build_command) sets torch's `join_timeout` and `read_timeout` to the same value
(OPENSORA_RDZV_TIMEOUT_S, default 300 s). When node 0, which hosts the store, never comes, the other nodes
cannot even reach the store; they fail after `read_timeout` with the endpoint named the same way.
"""

from __future__ import annotations

import os
import socket
import sys

from torch.distributed.elastic.rendezvous import (
    RendezvousConnectionError,
    RendezvousHandler,
    RendezvousParameters,
    RendezvousTimeoutError,
    dynamic_rendezvous,
    rendezvous_handler_registry,
)
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
from torch.distributed.run import main as torchrun_main

BACKEND = "opensora-c10d"
_KEY = "opensora/rendezvous/{run_id}/{what}"


class ReportingRendezvousHandler(RendezvousHandler):
    """torch's c10d DynamicRendezvousHandler, plus a list of the arrived nodes for the timeout message."""

    def __init__(self, inner: RendezvousHandler, store, params: RendezvousParameters):
        self._inner, self._store, self._params = inner, store, params
        self._announced = False

    def _key(self, what: str) -> str:
        return _KEY.format(run_id=self._params.run_id, what=what)

    def _announce(self) -> None:
        if self._announced:
            return
        host = " (store host)" if self._params.get_as_bool("is_host") else ""
        n = self._store.add(self._key("count"), 1)
        self._store.set(self._key(f"node{n}"), f"{socket.gethostname()} pid {os.getpid()}{host}")
        self._announced = True

    def nodes_seen(self) -> list[str]:
        count = self._store.add(self._key("count"), 0)
        return [self._store.get(self._key(f"node{i}")).decode() for i in range(1, count + 1)]

    def next_rendezvous(self):
        self._announce()
        try:
            return self._inner.next_rendezvous()
        except RendezvousTimeoutError as e:
            seen = self.nodes_seen()
            raise RendezvousTimeoutError(
                f"rendezvous at {self._params.endpoint} timed out after {self._params.get('join_timeout', 600)} s: "
                f"{len(seen)} of {self._params.min_nodes} nodes joined ({', '.join(seen)}). Start the missing "
                "node(s) with the same --rdzv-endpoint, or raise OPENSORA_RDZV_TIMEOUT_S.") from e

    def get_backend(self) -> str:
        return BACKEND  # the name it was created under (torchrun checks it)

    # the rest is torch's handler

    @property
    def use_agent_store(self) -> bool:
        return self._inner.use_agent_store

    def is_closed(self) -> bool:
        return self._inner.is_closed()

    def set_closed(self):
        return self._inner.set_closed()

    def num_nodes_waiting(self) -> int:
        return self._inner.num_nodes_waiting()

    def get_run_id(self) -> str:
        return self._inner.get_run_id()

    def shutdown(self) -> bool:
        return self._inner.shutdown()


def create_handler(params: RendezvousParameters) -> RendezvousHandler:
    try:
        backend, store = create_backend(params)
    except RendezvousConnectionError as e:
        raise RendezvousConnectionError(
            f"cannot reach the rendezvous store at {params.endpoint} within {params.get('read_timeout', 60)} s "
            f"(expected {params.min_nodes} nodes, saw none): node 0 hosts it; is it running, and is the endpoint "
            "its address and a free port?") from e
    return ReportingRendezvousHandler(dynamic_rendezvous.create_handler(store, backend, params), store, params)


def main(argv: list[str] | None = None) -> None:
    rendezvous_handler_registry.register(BACKEND, create_handler)
    torchrun_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
