"""The trail of associations, STOW-RS requests and WADO-RS retrievals as the ingest paths keep it
(node.store.associations).

The trail shares the index's disk: when that is full a transfer still works (a C-ECHO must
answer) and the log line of the event still records it, so a row that cannot be written is a
warning, never a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from node.logs import event
from node.store import Database, StoreError, associations

log = logging.getLogger("fracnode.ingest")


class Trail:
    def __init__(self, db: Database) -> None:
        self.db = db

    def opened(self, record_id: str, started_at: float, peer_ae: str, address: str, port: int,
               called_ae: str) -> None:
        self._quietly(lambda: associations.opened(self.db, record_id, started_at, peer_ae, address, port,
                                                  called_ae))

    def rejected(self, record_id: str, at: float, peer_ae: str, address: str, port: int, called_ae: str,
                 reason: str) -> None:
        self._quietly(lambda: associations.rejected(self.db, record_id, at, peer_ae, address, port,
                                                    called_ae, reason))

    def ended(self, record_id: str, at: float, outcome: str, received: int, failed: int) -> None:
        self._quietly(lambda: associations.ended(self.db, record_id, at, outcome, received, failed))

    @staticmethod
    def _quietly(write: Callable[[], None]) -> None:
        try:
            write()
        except StoreError as exc:
            event(log, logging.WARNING, "audit row not written", reason=str(exc))
