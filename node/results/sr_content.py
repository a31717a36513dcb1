"""Content items every pipeline's TID 1500 measurement report uses (PS3.16 TID 1500, 1501, 300).

The observer (TID 1001/1004: the algorithm as a device), a probability in percent (TID 300), the
finding in words (a Comment, TEXT), finding sites, the document's Continuity of Content and
fracnode's local coding scheme. A pipeline's own SR module arranges them into its groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from node.results.producer import Producer

LOCAL_SCHEME = "99FRACNODE"
GroupT = TypeVar("GroupT", bound=hd.sr.templates.Template)
DocumentT = TypeVar("DocumentT", bound=Dataset)


def observation_context(producer: Producer) -> hd.sr.ObservationContext:
    """TID 1001 with a device observer (TID 1004): the algorithm, by a UID stable per model build."""
    algorithm = producer.algorithm
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=generate_uid(
                    entropy_srcs=[algorithm.name, algorithm.version, algorithm.weights_sha256]
                ),
                name=algorithm.name,
                manufacturer_name=producer.equipment["manufacturer"],  # type: ignore[arg-type]
                model_name=algorithm.name,
            ),
        )
    )


def percent_probability(
    value: float,
    name: hd.sr.CodedConcept,
    unit: hd.sr.CodedConcept,
    coordinates: Sequence[
        hd.sr.CoordinatesForMeasurement | hd.sr.CoordinatesForMeasurement3D
    ] = (),
) -> hd.sr.Measurement:
    """TID 300: a probability in [0, 1] written in percent (`unit` is UCUM %)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"probability {value!r} is outside [0, 1]")
    return hd.sr.Measurement(
        name=name,
        value=100.0 * float(value),
        unit=unit,
        referenced_coordinates=list(coordinates) or None,
    )


def comment(text: str, name: hd.sr.CodedConcept) -> hd.sr.TextContentItem:
    """The finding in words (CONTAINS TEXT "Comment"), the label viewers print first."""
    return hd.sr.TextContentItem(
        name=name, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def with_comment(group: GroupT, text: hd.sr.TextContentItem) -> GroupT:
    """`group` with a Comment appended: TID 1501 and 1410 are extensible (PS3.16 6.2.4) and
    highdicom's constructors have no argument for it."""
    group[0].ContentSequence.append(text)
    return group


def finding_sites(site: hd.sr.CodedConcept | None) -> list[hd.sr.FindingSite] | None:
    return [hd.sr.FindingSite(site)] if site is not None else None


def separate_items(document: DocumentT) -> DocumentT:
    """Mark the document and its containers SEPARATE (PS3.3 C.17.3.2.2, Continuity of Content):
    a measurement group is a list of statements, not one sentence. highdicom writes CONTINUOUS,
    which renderers such as DCMTK's dsr2html honour by running the values together without their
    names ("87.0 % Present"); SEPARATE gets "Probability: 87.0 %", "Fracture: Present"."""
    pending: list[Dataset] = [document]
    while pending:
        item = pending.pop()
        if item.get("ValueType") == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        pending.extend(item.get("ContentSequence", []))
    return document


def local_coding_scheme() -> Dataset:
    """PS3.3 C.12.1.1.2: identifies the local scheme 99FRACNODE that fracnode's own codes use."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "fracnode result codes"
    item.CodingSchemeResponsibleOrganization = "fracnode"
    return item
