"""Network helpers with no project dependencies (a bottom-layer module any part may import)."""
from __future__ import annotations

import socket


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` if it can be bound on ``host`` now, else a free port picked by the OS.

    Another process may take the port between this check and its use; callers that can, bind
    and keep the socket instead."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError(f"no free port on {host}")
