"""The `instances` table: one row per SOP instance in the spool (node.spool keeps the files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from node.records import Instance, SeriesAttributes, summarize_series
from node.store.sql import Sql

SERIES_COLUMNS = "series_uid, sop_class_uid, modality, body_part, series_description, protocol_name, image_type"


@dataclass(frozen=True)
class HeldCopy:
    path: str
    digest: str  # '' until a resend asked for it (node.spool)


@dataclass(frozen=True)
class SpoolUsage:
    bytes: int
    studies: int


@dataclass(frozen=True)
class SeriesSummary:
    """A series of a study as the API lists it."""

    series_uid: str
    modality: str
    body_part: str
    series_description: str
    instances: int
    sop_classes: tuple[str, ...]


def held(sql: Sql, sop_instance_uid: str) -> HeldCopy | None:
    row = sql.one("SELECT path, digest FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))
    return HeldCopy(row["path"], row["digest"]) if row is not None else None


def is_indexed(sql: Sql, sop_instance_uid: str) -> bool:
    return sql.one("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)) is not None


def set_digest(sql: Sql, sop_instance_uid: str, path: Path, digest: str) -> None:
    """Keep a digest computed late, unless the row changed meanwhile."""
    sql.execute(
        "UPDATE instances SET digest = ? WHERE sop_instance_uid = ? AND path = ? AND digest = ''",
        (digest, sop_instance_uid, str(path)),
    )


def put(sql: Sql, instance: Instance) -> None:
    """Insert the instance's row, or replace the one held under its SOP Instance UID."""
    sql.execute(
        """INSERT INTO instances (sop_instance_uid, sop_class_uid, study_uid, series_uid,
        transfer_syntax_uid, modality, body_part, series_description, protocol_name, image_type,
        path, digest, size, received_at, calling_ae, association_id)
        VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
        ON CONFLICT (sop_instance_uid) DO UPDATE SET sop_class_uid = excluded.sop_class_uid,
        study_uid = excluded.study_uid, series_uid = excluded.series_uid,
        transfer_syntax_uid = excluded.transfer_syntax_uid, modality = excluded.modality,
        body_part = excluded.body_part, series_description = excluded.series_description,
        protocol_name = excluded.protocol_name, image_type = excluded.image_type,
        path = excluded.path, digest = excluded.digest, size = excluded.size,
        received_at = excluded.received_at, calling_ae = excluded.calling_ae,
        association_id = excluded.association_id""",
        (
            instance.sop_instance_uid, instance.sop_class_uid, instance.study_instance_uid,
            instance.series_instance_uid, instance.transfer_syntax_uid, instance.modality,
            instance.body_part, instance.series_description, instance.protocol_name,
            instance.image_type, str(instance.path), instance.digest, instance.size,
            instance.received_at, instance.calling_ae, instance.association_id,
        ),
    )


def indexed_paths(sql: Sql) -> set[str]:
    return {row["path"] for row in sql.query("SELECT path FROM instances")}


def paths(sql: Sql, study_uid: str, series_uid: str | None = None) -> list[Path]:
    """The files of a study (or of one of its series), by path."""
    if series_uid is None:
        rows = sql.query("SELECT path FROM instances WHERE study_uid = ? ORDER BY path", (study_uid,))
    else:
        rows = sql.query(
            "SELECT path FROM instances WHERE study_uid = ? AND series_uid = ? ORDER BY path",
            (study_uid, series_uid),
        )
    return [Path(row["path"]) for row in rows]


def any_path(sql: Sql, study_uid: str) -> Path | None:
    row = sql.one("SELECT path FROM instances WHERE study_uid = ? LIMIT 1", (study_uid,))
    return Path(row["path"]) if row is not None else None


def path_in_study(sql: Sql, sop_instance_uid: str, study_uid: str) -> Path | None:
    row = sql.one(
        "SELECT path FROM instances WHERE sop_instance_uid = ? AND study_uid = ?", (sop_instance_uid, study_uid)
    )
    return Path(row["path"]) if row is not None else None


def count(sql: Sql, study_uid: str) -> int:
    row = sql.one("SELECT COUNT(*) AS n FROM instances WHERE study_uid = ?", (study_uid,))
    return int(row["n"]) if row is not None else 0


def series_of(sql: Sql, study_uid: str) -> tuple[SeriesAttributes, ...]:
    """The study's series as routing sees them."""
    return summarize_series(
        sql.query(f"SELECT {SERIES_COLUMNS} FROM instances WHERE study_uid = ?", (study_uid,))
    )


def series_files(
    sql: Sql, study_uid: str, series_uids: Sequence[str]
) -> list[tuple[SeriesAttributes, tuple[Path, ...]]]:
    """These series of the study (those still held, in the order asked), each with its files by path."""
    if not series_uids:
        return []
    rows = sql.query(
        f"""SELECT {SERIES_COLUMNS}, path FROM instances
        WHERE study_uid = ? AND series_uid IN ({sql.dialect.params(len(series_uids))})
        ORDER BY series_uid, path""",
        (study_uid, *series_uids),
    )
    attributes = {s.series_instance_uid: s for s in summarize_series(rows)}
    files: dict[str, list[Path]] = {}
    for row in rows:
        files.setdefault(row["series_uid"], []).append(Path(row["path"]))
    return [(attributes[uid], tuple(files[uid])) for uid in series_uids if uid in files]


def series_summaries(sql: Sql, study_uid: str) -> list[SeriesSummary]:
    """The study's series in the order they arrived."""
    rows = sql.query(
        f"""SELECT series_uid, MAX(modality) AS modality, MAX(body_part) AS body_part,
        MAX(series_description) AS series_description, COUNT(*) AS instances,
        {sql.dialect.concat_distinct("sop_class_uid")} AS sop_classes
        FROM instances WHERE study_uid = ? GROUP BY series_uid ORDER BY MIN(received_at)""",
        (study_uid,),
    )
    return [
        SeriesSummary(row["series_uid"], row["modality"], row["body_part"], row["series_description"],
                      row["instances"], tuple(sorted(row["sop_classes"].split(","))))
        for row in rows
    ]


def usage(sql: Sql) -> SpoolUsage:
    row = sql.one("SELECT COALESCE(SUM(size), 0) AS bytes, COUNT(DISTINCT study_uid) AS studies FROM instances")
    return SpoolUsage(int(row["bytes"]), int(row["studies"])) if row is not None else SpoolUsage(0, 0)


def delete_study(sql: Sql, study_uid: str) -> None:
    sql.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
