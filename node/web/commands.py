"""What the HTTP side may ask the running node to do: the one interface it holds for changes.

The node (node.service.Node) implements it; the web layer never imports the node itself, so the
HTTP side reads through `node.web.queries.Queries` and acts through these methods only.
"""

from __future__ import annotations

from typing import Protocol

from node.assembly import AnalysisRequest
from node.ingest.stow import StoreTransaction
from node.store.pulls import Pull


class Commands(Protocol):
    def retry_job(self, job_id: int) -> bool:
        """Queue a failed job again with fresh attempts; False when it has not failed."""
        ...

    def analyze_again(self, study_uid: str, requested_by: str) -> AnalysisRequest:
        """Analyse a held study anew from the spool (raises node.assembly.StudyNotHeld)."""
        ...

    def request_pull(self, study_uid: str, peer: str, requested_by: str) -> tuple[Pull, bool]:
        """Retrieve a study from a peer, then analyse it: (the pull, whether it is new). Raises
        node.pull.PullError."""
        ...

    def begin_stow(self, principal: str, address: tuple[str, int], boundary: bytes,
                   study_uid: str | None) -> StoreTransaction:
        """A STOW-RS request's transaction (node.ingest.stow)."""
        ...
