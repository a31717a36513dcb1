"""Socket settings every DICOM connection of the node shares, listening (ingest) or calling
(dispatch, pulls)."""

from __future__ import annotations

import socket


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle's algorithm: DIMSE sends small PDUs and waits for replies (PS3.8 9.3)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
