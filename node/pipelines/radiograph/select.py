"""Which objects of a study the radiograph pipeline analyses: not its own results, and only images
of the model's intended use, read from the DICOM header (which body region an image shows).

The model covers musculoskeletal radiographs of four regions (its body-region head's channels:
hand, leg, hip, shoulder). The header decides when it is informative: Body Part Examined (PS3.3
C.7.3.1; defined terms in PS3.16 Annex L), the Anatomic Region Sequence's code meaning (C.8.4.6),
then the words of Series Description, Study Description and Protocol Name. A generic or missing
value (EXTREMITY, OTHER, empty) decides nothing, and the network decides (see RadiographFracture
Pipeline). Pure functions; reasons name attributes and the region found, never the free text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom import Dataset

# Words (upper case, as whole tokens) that name a region the model covers, per body-region channel.
IN_SCOPE: dict[str, frozenset[str]] = {
    "hand": frozenset({"HAND", "HANDS", "WRIST", "WRISTS", "FINGER", "FINGERS", "THUMB", "CARPAL", "CARPUS",
                       "SCAPHOID", "METACARPAL", "METACARPALS", "PHALANX", "PHALANGES"}),
    "leg": frozenset({"LEG", "LEGS", "LOWERLEG", "KNEE", "KNEES", "ANKLE", "ANKLES", "FOOT", "FEET", "TOE", "TOES",
                      "TIBIA", "FIBULA", "TIBFIB", "CALCANEUS", "HEEL", "PATELLA", "THIGH",
                      "LOWEREXTREMITY", "LOWERLIMB", "METATARSAL", "METATARSALS", "TARSAL"}),
    "hip": frozenset({"HIP", "HIPS", "PELVIS", "PELVIC", "ACETABULUM", "SACROILIAC", "FEMORAL"}),
    "shoulder": frozenset({"SHOULDER", "SHOULDERS", "HUMERUS", "ARM", "UPPERARM", "ELBOW", "ELBOWS", "FOREARM",
                           "RADIUS", "ULNA", "CLAVICLE", "SCAPULA", "UPPEREXTREMITY", "UPPERLIMB"}),
}
# Words that name a region outside the model's intended use, and the name a reason gives it.
OUT_OF_SCOPE: dict[str, str] = {
    **dict.fromkeys(("CHEST", "THORAX", "LUNG", "LUNGS", "RIB", "RIBS", "STERNUM", "CXR"), "chest"),
    **dict.fromkeys(("ABDOMEN", "ABDOMINAL", "ABD", "KUB", "BOWEL"), "abdomen"),
    **dict.fromkeys(("SKULL", "HEAD", "BRAIN", "FACE", "FACIAL", "SINUS", "SINUSES", "ORBIT", "ORBITS",
                     "MANDIBLE", "JAW", "NASAL", "DENTAL", "TEETH", "TMJ", "ZYGOMA"), "head"),
    # not NECK: "femoral neck" is a hip radiograph
    **dict.fromkeys(("SPINE", "CSPINE", "TSPINE", "LSPINE", "LSSPINE", "CERVICAL", "THORACIC", "LUMBAR",
                     "SACRUM", "COCCYX", "VERTEBRA", "VERTEBRAE", "WHOLESPINE"), "spine"),
    **dict.fromkeys(("BREAST", "MAMMO", "MAMMOGRAM", "MAMMOGRAPHY"), "breast"),
}
# Body Part Examined values that say nothing about the region.
GENERIC = frozenset({"", "EXTREMITY", "EXTREMITIES", "OTHER", "UNKNOWN", "WHOLEBODY", "BODY", "LIMB", "BONE"})
# Two-word names written as one token before matching ("LOWER LIMB" → "LOWERLIMB").
_JOINED = re.compile(r"\b(LOWER|UPPER|C|T|L|LS|WHOLE|TIB)[\s_-]+(LIMB|EXTREMITY|LEG|ARM|SPINE|FIB)\b")
_WORDS = re.compile(r"[A-Z]+")
ATTRIBUTES = ("BodyPartExamined", "AnatomicRegionSequence", "SeriesDescription", "StudyDescription", "ProtocolName")


@dataclass(frozen=True)
class HeaderScope:
    """What the header says: a model region (in scope), an out-of-scope region, or nothing."""

    region: str = ""  # one of IN_SCOPE's keys, or ""
    out_of_scope: str = ""  # e.g. "chest", or ""
    attribute: str = ""  # the attribute that decided ("" when none did)

    @property
    def decided(self) -> bool:
        return bool(self.region or self.out_of_scope)


def classify_text(text: str) -> tuple[str, str]:
    """(model region, out-of-scope region) that the words of `text` name; ("", "") when none or both kinds."""
    upper = _JOINED.sub(lambda m: m.group(1) + m.group(2), str(text).upper())
    words = set(_WORDS.findall(upper))
    regions = sorted(region for region, names in IN_SCOPE.items() if words & names)
    outside = sorted({OUT_OF_SCOPE[word] for word in words if word in OUT_OF_SCOPE})
    if outside and not regions:
        return "", outside[0]
    if len(regions) == 1 and not outside:
        return regions[0], ""
    return "", ""  # nothing named, or a mix (e.g. "CHEST AND SHOULDER"): the header does not decide


def _text(ds: Dataset, attribute: str) -> str:
    try:
        if attribute == "AnatomicRegionSequence":
            items = ds.get("AnatomicRegionSequence") or []
            return " ".join(str(item.get("CodeMeaning", "")) for item in items)
        value = ds.get(attribute, "")
        return "" if value is None else str(value)
    except Exception:  # noqa: BLE001 - a malformed attribute says nothing; the network decides
        return ""


def header_scope(ds: Dataset) -> HeaderScope:
    """The first informative attribute of ATTRIBUTES decides; a generic Body Part Examined does not."""
    for attribute in ATTRIBUTES:
        text = _text(ds, attribute).strip()
        if attribute == "BodyPartExamined" and text.upper() in GENERIC:
            continue
        region, outside = classify_text(text)
        if region or outside:
            return HeaderScope(region=region, out_of_scope=outside, attribute=attribute)
    return HeaderScope()


SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SCOPE = "the model covers hand/wrist, leg/foot, hip/pelvis and shoulder/arm radiographs"


def own_result(ds: Dataset) -> str:
    """Why an object is one of fracnode's own results (never analysed again), or ""."""
    if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX) and ds.get("Manufacturer") == "fracnode":
        return "a fracnode result (secondary capture), not analysed again"
    return ""


def select(ds: Dataset) -> tuple[HeaderScope, str]:
    """What the header says of an object's region, and why it is not analysed ("" when it is)."""
    reason = own_result(ds)
    scope = header_scope(ds)
    if not reason and scope.out_of_scope:
        reason = f"outside the model's intended use: {scope.attribute} names the {scope.out_of_scope} ({SCOPE})"
    return scope, reason
