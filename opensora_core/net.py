"""Free local ports, for the processes we start ourselves (a 1-rank process group, test servers)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now: the kernel's pick for a socket bound to port 0, which
    is closed again before returning. Give it at once to the process that binds it (another process could take
    it in between; the kernel does not hand a just-released port out again soon, so in practice none does)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
