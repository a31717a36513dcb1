"""Finding a study by its Accession Number without keeping the number.

The index holds no patient data, and an Accession Number identifies a patient's examination; so
the node keeps only a keyed hash of it (HMAC-SHA256 with a random key in `<data_dir>/search-key`,
readable by the node's user only), recorded when a study completes. The dashboard's search sends
the text in a POST body (never in a URL); it matches that hash or a Study Instance UID, and lists
show UIDs only, never the number searched for.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from pydicom import dcmread

from node.store import Database
from node.store import search as table

KEY_FILE = "search-key"


def _key(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    return bytes.fromhex(path.read_text().strip())


class StudySearch:
    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self._key = _key(data_dir)

    def digest(self, accession: str) -> str:
        text = accession.strip().upper()
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest() if text else ""

    def remember(self, study_uid: str, instance: Path) -> None:
        """Record the keyed hash of the study's Accession Number (PS3.3 C.7.2.1), read from one of
        its instances; a study without one is still findable by its UID."""
        try:
            header = dcmread(instance, stop_before_pixels=True, specific_tags=["AccessionNumber"])
            accession = str(header.get("AccessionNumber", "") or "")
        except Exception:  # noqa: BLE001 - search is a convenience: never fail a study for it
            accession = ""
        table.remember(self.db, study_uid, self.digest(accession))

    def find(self, text: str, limit: int) -> list[str]:
        """Study Instance UIDs whose UID starts with `text` or whose Accession Number is `text`."""
        text = text.strip()
        if not text:
            return []
        return table.find(self.db, text, self.digest(text), limit)
