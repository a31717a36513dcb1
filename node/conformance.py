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

from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import sop_class as pynetdicom_sop_class

from node import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, __version__
from node.dispatch.dimse import FALLBACK_TRANSFER_SYNTAXES
from node.ingest.dimse import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES

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
        [(UID(uid).name, f"`{uid}`", "; ".join(
            (["the syntax results are written in"] if uid == RESULT_TRANSFER_SYNTAX else [])
            + (["a fallback after each object's own syntax"] if uid in fallback else [])))
         for uid in scu_transfer_syntaxes()],
    )
    identification = markdown_table(["", ""], [
        ("Product", "fracnode, a DICOM node that runs fracture AI models and returns DICOM results"),
        ("Version", __version__),
        ("Implementation Class UID", f"`{IMPLEMENTATION_CLASS_UID}`"),
        ("Implementation Version Name", f"`{IMPLEMENTATION_VERSION_NAME}`"),
        ("Intended use", "research and evaluation; **not for diagnostic use**"),
    ])
    return {
        "identification": identification,
        "scp-sop-classes": scp,
        "scp-transfer-syntaxes": syntaxes,
        "scu-sop-classes": results,
        "scu-transfer-syntaxes": proposed,
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
