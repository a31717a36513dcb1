"""A study retrieved without a running node, for `fracnode analyze --from PEER --study UID`.

The instances go into a throw-away spool (its own index, in a folder the caller removes), through
the same code as the node's pulls. A C-MOVE needs a C-STORE SCP at the address the peer knows for
our AE title: this one listens on `node.bind`:`node.port` for as long as the retrieval takes,
so it cannot run beside a node that holds that port (use the node's API, or C-GET, then).
"""

from __future__ import annotations

from pathlib import Path

from node.config import Config, DicomwebPeer
from node.ingest.dimse import DimseIngest
from node.pull import Progress, PullError, Retrieved, dimse, no_progress, wado
from node.pull.puller import find, known_peer, source_of
from node.spool import Spool
from node.store import instances, open_database


def retrieve_into(
    config: Config, peer_name: str, study_uid: str, folder: Path, progress: Progress = no_progress
) -> tuple[Retrieved, list[Path]]:
    """Retrieve the study into `folder`; (what came, the instance files). Raises PullError."""
    peer = known_peer(config, peer_name)
    found = find(config, peer, study_uid)
    db = open_database(folder / "index.sqlite")
    try:
        spool = Spool(folder / "spool", db)
        source = source_of(peer)
        node = config.node
        if isinstance(peer, DicomwebPeer):
            retrieved = wado.retrieve_study(peer, study_uid, spool, db, source, progress)
        elif peer.retrieve == "c-get":
            retrieved = dimse.get_study(peer, node.ae_title, study_uid, found.sop_classes, spool, source,
                                        node.network_timeout_s, progress)
        else:
            receiver = DimseIngest(node, spool, db)
            try:
                receiver.start()
            except OSError as exc:
                raise PullError(
                    f"C-MOVE from {peer.name!r} needs our DICOM port {node.bind}:{node.port}, where the"
                    f" peer sends {node.ae_title}'s instances: {exc.strerror}. Is the node running?"
                    " Ask it instead (POST /api/v1/studies/<uid>/analyze), or use a peer with"
                    " retrieve: c-get"
                ) from exc
            try:
                retrieved = dimse.move_study(peer, node.ae_title, node.ae_title, study_uid,
                                             node.network_timeout_s, progress)
            finally:
                receiver.stop()
        return retrieved, instances.paths(db, study_uid)
    finally:
        db.close()
