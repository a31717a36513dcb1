"""Pull a study from a peer on request, then route it as if it had been pushed.

A DICOMweb peer is asked by QIDO-RS whether it holds the study and retrieved by WADO-RS
(PS3.18 10.6, 10.4); a DIMSE peer by C-FIND, then C-GET or C-MOVE (PS3.4 C.4.2, C.4.3; its
`retrieve` setting). Every instance goes through the same durable path as a pushed one (spool
file, fsync, index row); when the retrieval ends, assembly completes the study at once.

`wado` and `dimse` speak to the peers, `puller` runs pulls in the node (table `pulls`),
`offline` retrieves into a throw-away spool for `fracnode analyze --from`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# called with (received, duplicates, failed) as instances arrive
Progress = Callable[[int, int, int], None]
# true when the node is stopping and the retrieval should end early
Cancelled = Callable[[], bool]
MAX_PROBLEMS = 5  # reasons kept per pull; the counts say how many there were


class PullError(Exception):
    """A pull that cannot be done; `status` is the HTTP status the API answers with."""

    status = 502


class UnknownPeer(PullError):
    status = 400


class StudyNotFound(PullError):
    status = 404


class PeerUnreachable(PullError):
    """No connection, a timeout, or the peer refused us (credentials, AE title)."""

    status = 502


class RetrieveFailed(PullError):
    """The peer was reached but the retrieval failed or ended early."""

    status = 502


@dataclass(frozen=True)
class Found:
    """What the peer said about the study before the retrieval (QIDO-RS or C-FIND)."""

    instances: int | None  # NumberOfStudyRelatedInstances (0020,1208), when the peer says
    sop_classes: tuple[str, ...] = ()  # SOPClassesInStudy (0008,0062), when the peer says


@dataclass(frozen=True)
class Retrieved:
    """What one retrieval brought: new instances, identical ones already held, failures."""

    received: int
    duplicates: int = 0
    failed: int = 0
    problems: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        text = f"{self.received} instance(s) received"
        if self.duplicates:
            text += f", {self.duplicates} already held"
        if self.failed:
            text += f", {self.failed} failed: " + "; ".join(self.problems)
        return text


def no_progress(received: int, duplicates: int, failed: int) -> None:
    return None


def never() -> bool:
    return False
