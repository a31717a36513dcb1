"""The `study_search` table: a keyed hash of each study's Accession Number (node.search)."""

from __future__ import annotations

from node.store.sql import Sql


def remember(sql: Sql, study_uid: str, accession_hmac: str) -> None:
    sql.execute(
        """INSERT INTO study_search (study_uid, accession_hmac) VALUES (?, ?)
        ON CONFLICT (study_uid) DO UPDATE SET accession_hmac = excluded.accession_hmac""",
        (study_uid, accession_hmac),
    )


def find(sql: Sql, text: str, accession_hmac: str, limit: int) -> list[str]:
    """Study Instance UIDs equal to `text` or starting with it, or whose Accession Number has
    this hash."""
    prefix = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = sql.query(
        """SELECT study_uid FROM studies WHERE study_uid = ? OR study_uid LIKE ? ESCAPE '\\'
        UNION SELECT study_uid FROM study_search WHERE accession_hmac = ? LIMIT ?""",
        (text, prefix, accession_hmac, limit),
    )
    return [r["study_uid"] for r in rows]
