"""Loopback ports for tests that start servers or rendezvous (web demo, accelerate launches)."""

import socket

# What a server or a gloo rendezvous says when another process took its port first.
PORT_TAKEN_MARKERS = ("address already in use", "eaddrinuse", "errno: 98", "errno 98")


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the OS may hand it out again before the caller binds it:
    callers that launch slowly retry on `port_was_taken`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_was_taken(message: str) -> bool:
    return any(marker in message.lower() for marker in PORT_TAKEN_MARKERS)
