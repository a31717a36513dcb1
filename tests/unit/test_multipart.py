"""The incremental multipart/related parser (RFC 2046 5.1.1) that STOW-RS bodies stream through."""

from __future__ import annotations

import random

import pytest

from node.ingest.multipart import (
    MAX_HEADER_BYTES,
    MalformedMultipart,
    MultipartParser,
    boundary_of,
    parse_content_type,
)

BOUNDARY = b"frac-3f1c9a"


class Recorder:
    """A PartSink that keeps every part, and checks the begin/data/end order."""

    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytes]] = []
        self.open = False

    def begin(self, headers: dict[str, str]) -> None:
        assert not self.open, "begin() inside a part"
        self.open = True
        self.parts.append((headers, b""))

    def data(self, chunk: bytes) -> None:
        assert self.open, "data() outside a part"
        assert chunk, "an empty data() call"
        headers, content = self.parts[-1]
        self.parts[-1] = (headers, content + chunk)

    def end(self) -> None:
        assert self.open, "end() outside a part"
        self.open = False


def parse(
    body: bytes, pieces: list[int] | None = None, boundary: bytes = BOUNDARY
) -> list[tuple[dict[str, str], bytes]]:
    """Parse `body` fed in pieces of the given sizes (the rest in one piece)."""
    recorder = Recorder()
    parser = MultipartParser(boundary, recorder)
    pos = 0
    for size in pieces or []:
        parser.feed(body[pos : pos + size])
        pos += size
    parser.feed(body[pos:])
    parser.close()
    assert not recorder.open
    return recorder.parts


def body(
    *contents: bytes,
    newline: bytes = b"\r\n",
    preamble: bytes = b"",
    epilogue: bytes = b"",
    headers: bytes = b"Content-Type: application/dicom",
) -> bytes:
    out = preamble
    for content in contents:
        out += (newline if out else b"") + b"--" + BOUNDARY + newline + headers + newline + newline + content
    return out + newline + b"--" + BOUNDARY + b"--" + epilogue


# contents chosen to sit next to the delimiter: CR and LF at the edges, dashes, the boundary mid-line
CONTENTS = (b"\x00\x01DICM\r\n-\r", b"\r\n--frac-3f1c9 not quite", b"", b"--" + BOUNDARY + b" inside a line")
SMALL = body(*CONTENTS, preamble=b"This is a preamble.\r\n", epilogue=b"\r\nepilogue --" + BOUNDARY)


@pytest.mark.parametrize("split", range(len(SMALL) + 1))
def test_a_body_split_at_any_byte_gives_the_same_parts(split):
    parts = parse(SMALL, [split])
    assert [content for _, content in parts] == list(CONTENTS)
    assert all(h == {"content-type": "application/dicom"} for h, _ in parts)


def test_a_body_fed_byte_by_byte_gives_the_same_parts():
    assert [c for _, c in parse(SMALL, [1] * len(SMALL))] == list(CONTENTS)


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("CRLF, no preamble", body(b"a", b"b"), [b"a", b"b"]),
        ("bare LF line breaks", body(b"a", b"b", newline=b"\n"), [b"a", b"b"]),
        # a CR before an LF delimiter reads as CRLF: the RFC's line break wins the ambiguity
        ("bare LF after content ending in CR", body(b"a\r", newline=b"\n"), [b"a"]),
        ("opens with CRLF", b"\r\n" + body(b"a"), [b"a"]),
        ("preamble and epilogue", body(b"a", preamble=b"ignore me", epilogue=b"\r\ntrailing junk"), [b"a"]),
        ("padding after the delimiter", b"--" + BOUNDARY + b" \t\r\n\r\nx\r\n--" + BOUNDARY + b"--", [b"x"]),
        ("no part headers", b"--" + BOUNDARY + b"\r\n\r\nx\r\n--" + BOUNDARY + b"--", [b"x"]),
        ("content ending in CR", body(b"x\r"), [b"x\r"]),
        ("no parts at all", b"--" + BOUNDARY + b"--\r\n", []),
    ],
)
def test_framing_variants(name, raw, expected):
    assert [c for _, c in parse(raw)] == expected, name


def test_headers_are_case_insensitive_and_folded_lines_are_joined():
    raw = (
        b"--" + BOUNDARY + b"\r\nCONTENT-TYPE: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location: a.dcm\r\n\r\nx\r\n--" + BOUNDARY + b"--"
    )
    [(headers, content)] = parse(raw)
    assert headers == {
        "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        "content-location": "a.dcm",
    }
    assert content == b"x"


def test_large_binary_parts_in_random_chunks_arrive_whole():
    rng = random.Random(7)
    contents = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(4)]
    raw = body(*contents)
    sizes = []
    while sum(sizes) < len(raw):
        sizes.append(rng.choice([1, 7, 64, 4096, 65536, 1 << 20]))
    assert [c for _, c in parse(raw, sizes)] == contents


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        (
            "missing final boundary",
            body(b"a")[: -len(b"--" + BOUNDARY + b"--")] + b"--" + BOUNDARY,
            "closing delimiter",
        ),
        ("ends inside a part", b"--" + BOUNDARY + b"\r\n\r\nabc", "inside a part"),
        ("ends inside headers", b"--" + BOUNDARY + b"\r\nContent-Type: appl", "header lines"),
        ("another boundary", body(b"a").replace(BOUNDARY, b"other-boundary"), "no delimiter line"),
        ("empty body", b"", "no delimiter line"),
        (
            "boundary is a prefix of a longer line",
            b"--" + BOUNDARY + b"X\r\n\r\na\r\n--" + BOUNDARY + b"--",
            "follows the delimiter",
        ),
        (
            "header line without a name",
            b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\na\r\n--" + BOUNDARY + b"--",
            "has no name",
        ),
        (
            "endless header lines",
            b"--" + BOUNDARY + b"\r\n" + b"X-Pad: " + b"p" * MAX_HEADER_BYTES,
            "header lines longer",
        ),
    ],
)
def test_malformed_bodies_are_refused_with_where_they_break(name, raw, message):
    with pytest.raises(MalformedMultipart, match=message):
        parse(raw)


def test_a_part_cut_short_has_begun_but_not_ended():
    recorder = Recorder()
    parser = MultipartParser(BOUNDARY, recorder)
    parser.feed(b"--" + BOUNDARY + b"\r\n\r\n" + b"x" * 1000)
    with pytest.raises(MalformedMultipart):
        parser.close()
    assert recorder.open and len(recorder.parts[0][1]) > 900


@pytest.mark.parametrize(
    ("content_type", "media_type", "params"),
    [
        (
            'multipart/related; type="application/dicom"; boundary=abc',
            "multipart/related",
            {"type": "application/dicom", "boundary": "abc"},
        ),
        (
            'Multipart/Related;boundary="a b:c";type=application/dicom',
            "multipart/related",
            {"boundary": "a b:c", "type": "application/dicom"},
        ),
        ("application/dicom", "application/dicom", {}),
        ("not a media type", "", {}),
        ("", "", {}),
    ],
)
def test_content_type_parameters(content_type, media_type, params):
    assert parse_content_type(content_type) == (media_type, params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "no boundary"),
        ({"boundary": "b" * 257}, "1-70"),
        ({"boundary": "ends in space "}, "1-70"),
        ({"boundary": "b\u00e9"}, "ASCII"),
    ],
)
def test_invalid_boundaries_are_named(params, message):
    with pytest.raises(MalformedMultipart, match=message):
        boundary_of(params)


def test_boundaries_longer_than_the_rfcs_70_are_taken_as_orthanc_sends_them():
    orthanc = "18db4e35-e782-4d93-bbdd-c5a4b6388222-18db4e35-e782-4d93-bbdd-c5a4b6388222"
    assert boundary_of({"boundary": orthanc}) == orthanc.encode()
