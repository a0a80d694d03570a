"""Free loopback ports for tests that start several servers."""

from __future__ import annotations

import random
import socket


def free_base_port(count: int = 6) -> int:
    """A base port B such that B+1 .. B+count are free (LMESH_BASE_PORT convention)."""
    for _ in range(100):
        # Below Linux's ephemeral range (32768-60999), where every outgoing connection of
        # the suite takes a port: a base there collided with clients between check and bind.
        # Replicas (`lmesh up --trainers 2`) add 100.
        base = random.randrange(20000, 32000, 10)
        try:
            for i in range(1, count + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")
