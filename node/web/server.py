"""Runs the HTTP application in a thread of the node's process (uvicorn on our own socket).

The socket is bound in `start()`, so a port in use fails the node's start with a clear error
instead of a log line in a background thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import uvicorn

from node.audit import Audit
from node.config import Config
from node.logs import event
from node.tls import server_context
from node.web.app import create_app
from node.web.auth import credentials
from node.web.commands import Commands
from node.web.queries import Queries

log = logging.getLogger("fracnode.web")


class WebBindError(RuntimeError):
    """The HTTP port cannot be bound; the message says what to change."""


class WebServer:
    def __init__(self, config: Config, queries: Queries, commands: Commands, audit: Audit | None = None) -> None:
        self.settings = settings = config.web
        self.app = create_app(config, queries, commands, credentials(settings.auth, config.storage.data_dir), audit)
        tls = settings.tls
        server_config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off",
            timeout_graceful_shutdown=5, h11_max_incomplete_event_size=1 << 20,
            ssl_certfile=str(tls.certificate) if tls.certificate else None,
            ssl_keyfile=str(tls.private_key) if tls.private_key else None,
        )
        if tls.enabled:
            server_config.load()
            server_config.ssl = server_context(tls, "web.tls")  # BCP 195, as the DICOM listener
        self._server = uvicorn.Server(server_config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1] if self._socket else self.settings.port

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.settings.bind else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
        # without it every response waits ~40 ms for a delayed ACK between its header and body writes
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.settings.bind, self.settings.port))
        except OSError as exc:
            sock.close()
            raise WebBindError(
                f"cannot listen for HTTP on {self.settings.bind}:{self.settings.port}: {exc.strerror}"
                " (is another web service using the port? set web.port or FRACNODE_HTTP_PORT,"
                " or web.enabled: false)"
            ) from exc
        sock.listen(128)
        sock.set_inheritable(True)
        self._socket = sock
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._server.serve(sockets=[sock])), name="web", daemon=True
        )
        self._thread.start()
        event(log, logging.INFO, "web server listening", bind=self.settings.bind, port=self.port,
              https=self.settings.tls.enabled)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
