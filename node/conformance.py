"""The tables of the DICOM Conformance Statement (PS3.2), generated from what the node negotiates.

`docs/conformance.md` holds each table between `<!-- generated:NAME -->` and
`<!-- /generated:NAME -->`. `scripts/conformance-tables` rewrites them from this module
(`python -m node.conformance [--check]`); tests/unit/test_conformance.py fails when the document
and the code disagree, and checks these lists against real negotiation and real result objects.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import sop_class as pynetdicom_sop_class

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, __version__
from node.config import NodeSettings
from node.dispatch.dimse import FALLBACK_TRANSFER_SYNTAXES
from node.ingest.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from node.pull import dimse as pull_dimse
from node.pull import puller, wado

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "conformance.md"
VERIFICATION = "1.2.840.10008.1.1"

# PS3.4 Annex B: the objects the node builds and sends with C-STORE (or STOW-RS); the unit test
# builds each kind with node.results and compares. Keyed by SOP Class UID.
RESULT_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.34": "the report: TID 1500 measurement report, one finding per image or vertebra",
    "1.2.840.10008.5.1.4.1.1.66.4": "the regions: FRACTIONAL (radiographs) or BINARY (cervical spine CT)",
    "1.2.840.10008.5.1.4.1.1.11.1": "overlay `gsps` on a grayscale source image",
    "1.2.840.10008.5.1.4.1.1.11.2": "overlay `gsps` on a colour source image",
    "1.2.840.10008.5.1.4.1.1.7": "overlay `secondary_capture`: the source with the regions burnt in",
}
# the transfer syntax every result object is written in (highdicom's default; the test checks it)
RESULT_TRANSFER_SYNTAX = str(ExplicitVRLittleEndian)

# What each Query/Retrieve service is used for (PS3.4 Annex C), keyed like
# node.pull.dimse.QUERY_RETRIEVE_SOP_CLASSES; a service missing here fails the generation.
QUERY_RETRIEVE_USES: dict[str, str] = {
    "C-FIND": "before every pull from a DIMSE peer: does it hold the study, with how many instances"
    " and of which SOP classes",
    "C-GET": "retrieve the study on the same association, from peers with `retrieve: c-get` (the default)",
    "C-MOVE": "have the peer send the study to the node's own AE title, from peers with `retrieve: c-move`",
}
# What the node does with each C-FIND return key (node.pull.dimse.FIND_RETURN_KEYS)
FIND_RETURN_KEY_USES: dict[str, str] = {
    "NumberOfStudyRelatedInstances": "the pull's `expected` count",
    "SOPClassesInStudy": "the storage SOP classes a C-GET proposes",
}
QIDO_ACCEPT = "application/dicom+json"  # what node.pull.wado.find_study asks for (the test checks)

_STORAGE_KEYWORDS = {uid: keyword for keyword, uid in pynetdicom_sop_class._STORAGE_CLASSES.items()}


def sop_class_name(uid: str) -> str:
    """pydicom's name for a UID, else pynetdicom's keyword spelled out (newer classes)."""
    name = UID(uid).name
    if name != uid:
        return name
    keyword = _STORAGE_KEYWORDS.get(uid)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", keyword) if keyword else uid


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def scp_sop_classes() -> list[str]:
    """Every abstract syntax the listener (and STOW-RS) accepts, Verification first."""
    return [VERIFICATION, *STORAGE_SOP_CLASSES]


def scu_transfer_syntaxes() -> list[str]:
    return list(dict.fromkeys([RESULT_TRANSFER_SYNTAX, *map(str, FALLBACK_TRANSFER_SYNTAXES)]))


def _described(uses: dict[str, str], key: str, where: str) -> str:
    if key not in uses:
        raise ValueError(f"node/conformance.py: {where} has no entry for {key!r}; say what it is used for")
    return uses[key]


def _attribute(keyword: str) -> tuple[str, str]:
    """(name, tag) of a data element keyword, as PS3.6 writes them."""
    number = tag_for_keyword(keyword)
    if number is None:
        raise ValueError(f"{keyword!r} is no DICOM data element keyword (PS3.6)")
    tag = Tag(number)
    return dictionary_description(keyword), f"({tag.group:04X},{tag.element:04X})"


def separate_compressed_contexts_up_to() -> int:
    """The most storage SOP classes a C-GET proposes with a presentation context per compressed
    transfer syntax (more share one context for them all): read from storage_contexts itself."""
    per_class = 1 + len(pull_dimse.COMPRESSED)
    most = 0
    for count in range(1, pull_dimse.MAX_STORAGE_CLASSES + 1):
        classes = [f"1.2.3.{n}" for n in range(count)]
        if len(pull_dimse.storage_contexts(classes)) == count * per_class:
            most = count
    return most


def query_retrieve_tables() -> dict[str, str]:
    """The tables of the pull's real-world activity (node.pull): Q/R SCU, C-GET storage, DICOMweb."""
    qr_syntaxes = ", ".join(UID(uid).name for uid in pull_dimse.QUERY_RETRIEVE_TRANSFER_SYNTAXES)
    sop_classes = markdown_table(
        ["SOP Class", "SOP Class UID", "Role", "DIMSE", "Transfer syntaxes proposed", "Use"],
        [
            (
                sop_class_name(uid),
                f"`{uid}`",
                "SCU",
                service,
                qr_syntaxes,
                _described(QUERY_RETRIEVE_USES, service, "QUERY_RETRIEVE_USES"),
            )
            for service, uid in pull_dimse.QUERY_RETRIEVE_SOP_CLASSES.items()
        ],
    )
    level = f"`{pull_dimse.QUERY_LEVEL}`"
    keys = [
        ("QueryRetrieveLevel", level, level),
        ("StudyInstanceUID", "the study's UID (single value matching)", "the study's UID (unique key)"),
    ] + [
        (keyword, "empty (return key): " + _described(FIND_RETURN_KEY_USES, keyword, "FIND_RETURN_KEY_USES"), "absent")
        for keyword in pull_dimse.FIND_RETURN_KEYS
    ]
    identifiers = markdown_table(
        ["Attribute", "Tag", "C-FIND identifier", "C-GET and C-MOVE identifier"],
        [(*_attribute(keyword), find, retrieve) for keyword, find, retrieve in keys],
    )
    get_classes = markdown_table(
        ["SOP Class", "SOP Class UID", "Role"],
        [(sop_class_name(uid), f"`{uid}`", "SCP") for uid in pull_dimse.COMMON_STORAGE_CLASSES],
    )
    most = separate_compressed_contexts_up_to()
    compressed = (
        f"its own context per class (up to {most} classes), else one context per class"
        f" for all {len(pull_dimse.COMPRESSED)} compressed syntaxes"
    )
    get_syntaxes = markdown_table(
        ["Transfer Syntax", "Transfer Syntax UID", "Proposed in"],
        [
            (UID(uid).name, f"`{uid}`", "one context per class, with the other uncompressed syntax")
            for uid in pull_dimse.UNCOMPRESSED
        ]
        + [(UID(uid).name, f"`{uid}`", compressed) for uid in pull_dimse.COMPRESSED],
    )
    # the AE every pull association is requested with (its defaults are pynetdicom's)
    defaults = {name: field.default for name, field in NodeSettings.model_fields.items()}
    requestor = pull_dimse.scu_ae(defaults["ae_title"], defaults["network_timeout_s"])
    association = markdown_table(
        ["", ""],
        [
            (
                "Information model",
                (
                    f"Study Root (PS3.4 C.6.2), level {level} only: no Patient Root,"
                    " no Patient/Study Only, no relational queries or retrievals"
                ),
            ),
            (
                "Storage SOP classes per C-GET",
                (
                    "those the C-FIND response lists in SOP Classes in Study (0008,0062), else the"
                    f" {len(pull_dimse.COMMON_STORAGE_CLASSES)} classes of the next table; at most"
                    f" {pull_dimse.MAX_STORAGE_CLASSES}"
                ),
            ),
            (
                "Pulls at once",
                (f"{puller.WORKERS} retrievals (more wait in a queue); a pull makes one association at a time"),
            ),
            ("Maximum PDU size received", f"{requestor.maximum_pdu_size}"),
            (
                "Implementation Class UID, Version Name",
                (
                    f"`{requestor.implementation_class_uid}`, `{requestor.implementation_version_name}`"
                    " (fracnode's, like every association the node requests)"
                ),
            ),
            (
                "Timeouts",
                (
                    f"`node.network_timeout_s` (default {defaults['network_timeout_s']:g} s) for"
                    " connection, ACSE, DIMSE and network reads"
                ),
            ),
        ],
    )
    qido = (
        "`GET {url}/studies?StudyInstanceUID={uid}"
        f"&includefield={wado.NUMBER_OF_STUDY_RELATED_INSTANCES}&includefield={wado.SOP_CLASSES_IN_STUDY}`"
    )
    wado_rs = "`GET {url}/studies/{uid}`"
    dicomweb = markdown_table(
        ["Transaction (PS3.18)", "Request", "Accept", "Sent"],
        [
            ("Search for Studies (QIDO-RS, 10.6)", qido, f"`{QIDO_ACCEPT}`", "before every pull from a DICOMweb peer"),
            (
                "Retrieve Study (WADO-RS, 10.4)",
                wado_rs,
                f"`{wado.ANY_SYNTAX}`",
                "the retrieval: instances in the syntax the peer holds them in",
            ),
            (
                "Retrieve Study (WADO-RS, 10.4)",
                wado_rs,
                f"`{wado.DEFAULT_SYNTAX}`",
                "again, only when the peer answered the first with 406 Not Acceptable",
            ),
        ],
    )
    return {
        "qr-scu-sop-classes": sop_classes,
        "qr-scu-identifiers": identifiers,
        "qr-scu-association": association,
        "qr-get-storage-sop-classes": get_classes,
        "qr-get-transfer-syntaxes": get_syntaxes,
        "dicomweb-pull-requests": dicomweb,
    }


def tables() -> dict[str, str]:
    """Each generated table of docs/conformance.md by its marker name."""
    scp = markdown_table(
        ["SOP Class", "SOP Class UID", "Role"],
        [(sop_class_name(uid), f"`{uid}`", "SCP") for uid in scp_sop_classes()],
    )
    syntaxes = markdown_table(
        ["Transfer Syntax", "Transfer Syntax UID"],
        [(UID(uid).name, f"`{uid}`") for uid in TRANSFER_SYNTAXES],
    )
    results = markdown_table(
        ["SOP Class", "SOP Class UID", "Role", "What fracnode sends"],
        [(sop_class_name(VERIFICATION), f"`{VERIFICATION}`", "SCU", "`fracnode echo`")]
        + [(sop_class_name(uid), f"`{uid}`", "SCU", use) for uid, use in RESULT_SOP_CLASSES.items()],
    )
    fallback = {str(uid) for uid in FALLBACK_TRANSFER_SYNTAXES}
    proposed = markdown_table(
        ["Transfer Syntax", "Transfer Syntax UID", "Proposed"],
        [
            (
                UID(uid).name,
                f"`{uid}`",
                "; ".join(
                    (["the syntax results are written in"] if uid == RESULT_TRANSFER_SYNTAX else [])
                    + (
                        ["a fallback after the syntax of an uncompressed little-endian object"]
                        if uid in fallback
                        else []
                    )
                ),
            )
            for uid in scu_transfer_syntaxes()
        ],
    )
    identification = markdown_table(
        ["", ""],
        [
            ("Product", "fracnode, a DICOM node that runs fracture AI models and returns DICOM results"),
            ("Version", __version__),
            ("Implementation Class UID", f"`{IMPLEMENTATION_CLASS_UID}`"),
            ("Implementation Version Name", f"`{IMPLEMENTATION_VERSION_NAME}`"),
            ("Intended use", "research and evaluation; **not for diagnostic use**"),
        ],
    )
    return {
        "identification": identification,
        "scp-sop-classes": scp,
        "scp-transfer-syntaxes": syntaxes,
        "scu-sop-classes": results,
        "scu-transfer-syntaxes": proposed,
        **query_retrieve_tables(),
    }


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.DOTALL)


def _replacement(table: str) -> Callable[[re.Match[str]], str]:
    return lambda match: match.group(1) + table + "\n" + match.group(3)


def render(document: str) -> str:
    """The document with every generated table replaced by the code's current one."""
    for name, table in tables().items():
        pattern = _block(name)
        if not pattern.search(document):
            raise ValueError(f"docs/conformance.md has no <!-- generated:{name} --> block; add the markers back")
        document = pattern.sub(_replacement(table), document)
    return document


def generated_block(document: str, name: str) -> str:
    match = _block(name).search(document)
    if match is None:
        raise ValueError(f"no <!-- generated:{name} --> block")
    return match.group(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conformance-tables", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when the tables are stale")
    parser.add_argument("document", nargs="?", type=Path, default=DOCUMENT)
    args = parser.parse_args(argv)
    current = args.document.read_text(encoding="utf-8")
    updated = render(current)
    if args.check:
        if updated != current:
            print(f"{args.document}: tables differ from the code; run scripts/conformance-tables", file=sys.stderr)
            return 1
        return 0
    if updated != current:
        args.document.write_text(updated, encoding="utf-8")
        print(f"{args.document}: tables rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
