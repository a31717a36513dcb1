"""Structure-aware fuzzing of `fracnode serve`: A-ASSOCIATE-RQ, P-DATA-TF framing, data sets and
STOW-RS multipart bodies, mutated where their structure is (item and element lengths, VRs,
delimiters, fragment flags, boundaries), never only at random.

    .venv/bin/python -m tests.robustness.fuzz --cases 10000 [--seed N] [--folder DIR]
    .venv/bin/python -m tests.robustness.fuzz --seed N --only 6700[-6710]   # replay some cases

`--only` draws every earlier case's mutations from the same random sequence without sending
them, so a case of a long run is reproduced alone (each case's draws do not depend on answers).

A short run (a few hundred cases) is part of `make test` (tests/robustness/test_fuzz.py).
What must hold, checked after every case or every CHECK_EVERY cases:
- the node answers or closes within a bound, and a C-ECHO from another connection succeeds;
- no success (0x0000, or a stored STOW-RS part) for a data set that is not whole: a known-broken
  mutation is never a success, and any stored instance is read to its end by DCMTK's dcmdump
  and by pydicom, with the bytes the client sent;
- no HTTP 5xx and always an answer;
- the node's resident memory stays within MEMORY_BOUND_MB of where it started;
- no temporary file is left once the connections are closed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import httpx
from pydicom import Dataset, dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from node.incoming import file_meta
from tests.conftest import API_TOKEN
from tests.support import dicomgen
from tests.support.bombs import nested
from tests.support.rawdimse import associate_rq
from tests.support.served import Served, serve
from tests.unit.test_header import encoded, with_sequences

CT = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
]
CHECK_EVERY = 25
MEMORY_BOUND_MB = 300
READ_TIMEOUT_S = 10.0
ITEM, ITEM_END, SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"


@dataclass(frozen=True)
class Sample:
    """A whole data set to start mutations from."""

    syntax: str
    sop_instance_uid: str
    data: bytes  # the encoded data set, no file meta
    dataset: Dataset  # what `data` encodes (a deflated one is encoded again for each case)


def _fixed_uids(ds: Dataset, name: str) -> Dataset:
    """The same UIDs in every run: the samples' lengths steer the random draws (randrange), so
    with random UIDs a seed would not give the same cases twice."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        if keyword in ds:
            setattr(ds, keyword, generate_uid(entropy_srcs=["fracnode-fuzz", name, keyword]))
    return ds


def corpus() -> list[Sample]:
    samples = []
    for syntax in SYNTAXES:
        for undefined in (True, False):
            ds = _fixed_uids(with_sequences(dicomgen.ct_series(1, size=16)[0], undefined), f"{syntax}-{undefined}")
            if syntax == JPEG2000Lossless:
                ds.PixelData = encapsulate([bytes(range(256)) * 2])
                ds["PixelData"].VR = "OB"
            raw, offset = encoded(ds, syntax)
            samples.append(Sample(syntax, str(ds.SOPInstanceUID), raw[offset:], ds))
    deep = _fixed_uids(nested(20), "nested")
    raw, offset = encoded(deep)
    samples.append(Sample(ExplicitVRLittleEndian, str(deep.SOPInstanceUID), raw[offset:], deep))
    return samples


# -- mutations ---------------------------------------------------------------------------------


def _positions(data: bytes, needle: bytes) -> list[int]:
    found, start = [], 0
    while (at := data.find(needle, start)) >= 0:
        found.append(at)
        start = at + 1
    return found


def mutate_data_set(rng: random.Random, sample: Sample) -> tuple[str, bytes, bool]:  # noqa: C901 - one branch per kind
    """(what was done, the bytes, whether they are known not to be one whole data set)."""
    data = bytearray(sample.data)
    kind = rng.choice(
        ["truncate", "length", "length-past-end", "vr", "delimiter", "insert", "flip", "deepen", "swap-syntax-bytes"]
    )
    if kind == "truncate":
        return kind, bytes(data[: rng.randrange(0, len(data))]), True
    if kind == "length-past-end":  # the last element claims more than there is
        if sample.syntax in (ExplicitVRLittleEndian, JPEG2000Lossless):
            at = data.rfind(b"\xe0\x7f\x10\x00")
            if at >= 0:
                struct.pack_into("<L", data, at + 8, rng.choice([2**31, 0xFFFFFFF0, len(data) * 4]))
                return kind, bytes(data[: at + 12 + rng.randrange(0, 128)]), True
        return kind, bytes(data[: len(data) - rng.randrange(1, 64)]), True
    if kind == "length":  # an element or item length field made something else
        marks = _positions(bytes(data), ITEM) or [0]
        at = rng.choice(marks) + 4 if rng.random() < 0.5 else rng.randrange(0, max(1, len(data) - 4)) & ~1
        struct.pack_into("<L", data, at, rng.choice([0, 1, 7, 0xFFFF, 0xFFFFFFFF, rng.randrange(2**32)]))
    elif kind == "vr":
        marks = [
            m + 4 for needle in (b"UI", b"SQ", b"OB", b"OW", b"LO", b"CS") for m in _positions(bytes(data), needle)
        ]
        at = rng.choice(marks) - 4 if marks else 0
        data[at : at + 2] = rng.choice([b"XX", b"\0\0", b"SQ", b"UN", b"OB", b"ZZ"])
    elif kind == "delimiter":
        marks = _positions(bytes(data), ITEM_END) + _positions(bytes(data), SEQUENCE_END)
        if marks:
            at = rng.choice(marks)
            if rng.random() < 0.5:
                del data[at : at + 8]
            else:
                data[at:at] = data[at : at + 8]
    elif kind == "insert":
        at = rng.randrange(0, len(data))
        data[at:at] = rng.choice(
            [ITEM, SEQUENCE_END, ITEM_END, bytes(rng.randrange(1, 40)), rng.randbytes(rng.randrange(1, 40))]
        )
    elif kind == "flip":
        for _ in range(rng.randrange(1, 8)):
            at = rng.randrange(0, len(data))
            data[at] ^= 1 << rng.randrange(8)
    elif kind == "deepen":
        depth = rng.choice([33, 60, 100])
        deep = _fixed_uids(nested(depth), f"nested-{depth}")
        deep.SOPInstanceUID = sample.sop_instance_uid  # so that each case's own UID replaces it
        raw, offset = encoded(
            deep, ExplicitVRLittleEndian if sample.syntax != ExplicitVRBigEndian else ExplicitVRBigEndian
        )
        return kind, raw[offset:], True  # deeper than node.storage.max_sequence_depth (32)
    elif kind == "swap-syntax-bytes":
        data[0:2] = data[1:2] + data[0:1]
    return kind, bytes(data), False


def mutate_associate(rng: random.Random) -> tuple[str, bytes]:
    pdu = bytearray(associate_rq("FUZZSCU", [(CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])] * 3).encode())
    kind = rng.choice(
        [
            "item-length",
            "pdu-length",
            "truncate",
            "flip",
            "duplicate-item",
            "garbage-item",
            "huge-user-info",
            "version",
            "context-id",
        ]
    )
    items = []
    at = 74
    while at + 4 <= len(pdu):
        items.append(at)
        at += 4 + int.from_bytes(pdu[at + 2 : at + 4], "big")
    if kind == "item-length":
        where = rng.choice(items)
        struct.pack_into(">H", pdu, where + 2, rng.choice([0, 1, 3, 0xFFFF, rng.randrange(65536)]))
    elif kind == "pdu-length":
        struct.pack_into(">L", pdu, 2, rng.choice([0, 4, 68, len(pdu) + 100, 0xFFFFFFFF, rng.randrange(2**32)]))
    elif kind == "truncate":
        pdu = pdu[: rng.randrange(1, len(pdu))]
    elif kind == "flip":
        for _ in range(rng.randrange(1, 6)):
            pdu[rng.randrange(len(pdu))] ^= 1 << rng.randrange(8)
    elif kind == "duplicate-item":
        where = rng.choice(items)
        size = 4 + int.from_bytes(pdu[where + 2 : where + 4], "big")
        pdu[where:where] = pdu[where : where + size]
        struct.pack_into(">L", pdu, 2, len(pdu) - 6)
    elif kind == "garbage-item":
        pdu += bytes([rng.randrange(256), 0]) + struct.pack(">H", 40) + rng.randbytes(40)
        struct.pack_into(">L", pdu, 2, len(pdu) - 6)
    elif kind == "huge-user-info":
        pdu += b"\x50\x00" + struct.pack(">H", 0xFFFF) + rng.randbytes(rng.randrange(0, 2000))
        struct.pack_into(">L", pdu, 2, len(pdu) - 6)
    elif kind == "version":
        pdu[6:8] = rng.randbytes(2)
    elif kind == "context-id":
        pdu[items[1] + 4] = rng.choice([0, 2, 255, 254])
    return kind, bytes(pdu)


# -- the node as the fuzzer talks to it -----------------------------------------------------------


def pdv(context_id: int, control: int, payload: bytes) -> bytes:
    item = struct.pack(">LBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BxL", 0x04, len(item)) + item


def c_store_command(sop_instance_uid: str) -> bytes:
    def element(number: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, number, len(value)) + value

    def ui(text: str) -> bytes:
        raw = text.encode()
        return raw + b"\0" if len(raw) % 2 else raw

    body = b"".join(
        (
            element(0x0002, ui(CT)),
            element(0x0100, b"\x01\x00"),
            element(0x0110, b"\x07\x00"),
            element(0x0700, b"\x00\x00"),
            element(0x0800, b"\x00\x00"),
            element(0x1000, ui(sop_instance_uid)),
        )
    )
    return element(0x0000, struct.pack("<L", len(body))) + body


class Connection:
    def __init__(self, port: int, syntax: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
        if syntax is not None:
            self.sock.sendall(associate_rq("FUZZSCU", [(CT, [syntax])]).encode())
            pdu_type, _ = self.receive()
            if pdu_type != 0x02:
                raise AssertionError(f"a valid A-ASSOCIATE-RQ got PDU type {pdu_type}")

    def receive(self) -> tuple[int, bytes]:
        header = self._exactly(6)
        return header[0], self._exactly(int.from_bytes(header[2:], "big"))

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(min(size - len(data), 1 << 20))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def status(self) -> int | None:
        """The C-STORE-RSP's status, or None when the node aborted or closed."""
        try:
            pdu_type, body = self.receive()
        except (OSError, ConnectionError):
            return None
        if pdu_type != 0x04:
            return None
        command = body[6:]
        at = command.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")  # (0000,0900) Status, length 2
        return struct.unpack_from("<H", command, at + 8)[0] if at >= 0 else None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def whole_on_disk(node: Served, sop_instance_uid: str, sent: bytes | None) -> str | None:
    """None when the stored instance is whole (and, given `sent`, is those bytes); else what is
    wrong. Whole: DCMTK's dcmdump and pydicom both read it to its end."""
    found = sorted((node.data_dir / "spool").rglob(f"{sop_instance_uid}.dcm"))
    if not found:
        return "acknowledged but not in the spool"
    raw = found[0].read_bytes()
    if sent is not None and not raw.endswith(sent):
        return "the stored data set is not the bytes sent"
    # without -q: dcmdump -q says nothing on stderr about why it failed
    dump = subprocess.run(["dcmdump", str(found[0])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if dump.returncode != 0:
        return f"dcmdump cannot read it: {dump.stderr.decode(errors='replace')[:200]}"
    try:
        _walk(dcmread(BytesIO(raw)))
    except Exception as exc:  # noqa: BLE001 - any failure means "not readable back"
        return f"pydicom cannot read it back: {type(exc).__name__}"
    return None


def _walk(ds: Dataset) -> None:
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _walk(item)


@dataclass
class Report:
    cases: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    seconds: float = 0.0


class Fuzzer:
    def __init__(self, node: Served, seed: int) -> None:
        self.node = node
        self.rng = random.Random(seed)
        self.samples = corpus()
        self.report = Report()
        self.baseline_kib = node.rss_kib()
        self._uid = 0
        self.dry = False  # draw the case's mutations (keeping the random sequence), send nothing

    def _fail(self, case: int, kind: str, text: str) -> None:
        self.report.failures.append(f"case {case} ({kind}): {text}")

    def _fresh(self, sample: Sample, data: bytes) -> tuple[str, bytes]:
        """The sample with a SOP Instance UID of its own (so each case is a new instance)."""
        self._uid += 1
        old = sample.sop_instance_uid
        uid = old[:-8] + str(self._uid % 10**8).zfill(8)  # same length: the encoding stays valid
        if old.encode() in data:
            return uid, data.replace(old.encode(), uid.encode(), 1)
        if data is sample.data and sample.syntax == DeflatedExplicitVRLittleEndian:
            sample.dataset.SOPInstanceUID = uid  # inside the deflate stream: encoded again
            raw, offset = encoded(sample.dataset, DeflatedExplicitVRLittleEndian)
            return uid, raw[offset:]
        return f"{old}.{self._uid}", data  # inside a mutated deflate stream: a UID nobody sends

    def case_associate(self, case: int) -> None:
        kind, pdu = mutate_associate(self.rng)
        if self.dry:
            return
        self.report.kinds[f"associate:{kind}"] += 1
        conn = Connection(self.node.port)
        try:
            conn.sock.sendall(pdu)
            conn.sock.shutdown(socket.SHUT_WR)
            started = time.monotonic()
            try:
                pdu_type, _ = conn.receive()
                self.report.outcomes[f"associate:pdu-{pdu_type:02x}"] += 1
            except (OSError, ConnectionError):
                self.report.outcomes["associate:closed"] += 1
            if time.monotonic() - started > READ_TIMEOUT_S:
                self._fail(case, kind, "no answer in time")
        finally:
            conn.close()

    def case_data_set(self, case: int) -> None:
        sample = self.rng.choice(self.samples)
        kind, data, broken = mutate_data_set(self.rng, sample)
        uid, data = self._fresh(sample, data)
        fragments = self.rng.choice([1, 3, 16])
        if self.dry:
            return
        self.report.kinds[f"data-set:{kind}"] += 1
        self._store(case, f"data-set:{kind}", sample.syntax, uid, data, broken, fragments)

    def case_p_data(self, case: int) -> None:
        sample = self.rng.choice(self.samples)
        uid, data = self._fresh(sample, sample.data)
        kind = self.rng.choice(
            ["pdv-length", "context", "control", "command-split", "no-command", "two-commands", "pdu-length", "reorder"]
        )
        command = c_store_command(uid)
        pdus = [pdv(1, 0x03, command)]
        step = self.rng.choice([7, 100, 1000, len(data) + 1])
        pieces = [data[i : i + step] for i in range(0, len(data), step)]
        pdus += [pdv(1, 0x02 if n == len(pieces) - 1 else 0x00, piece) for n, piece in enumerate(pieces)]
        target = self.rng.randrange(len(pdus))
        pdu = bytearray(pdus[target])
        if kind == "pdv-length":
            struct.pack_into(">L", pdu, 6, self.rng.choice([0, 1, 2, len(pdu), 0xFFFFFFFF]))
        elif kind == "context":
            pdu[10] = self.rng.choice([0, 3, 255])
        elif kind == "control":
            pdu[11] = self.rng.randrange(256)
        elif kind == "command-split":
            pdus[0:1] = [pdv(1, 0x01, command[:10]), pdv(1, 0x01, command[10:20]), pdv(1, 0x03, command[20:])]
            pdu = bytearray(pdus[target])
        elif kind == "no-command":
            pdus = pdus[1:] or pdus
            pdu = bytearray(pdus[min(target, len(pdus) - 1)])
        elif kind == "two-commands":
            pdus.insert(1, pdus[0])
        elif kind == "pdu-length":
            struct.pack_into(">L", pdu, 2, self.rng.choice([0, 2, 6, len(pdu) + 10, 0xFFFFFFFF]))
        elif kind == "reorder" and len(pdus) > 2:
            pdus[1], pdus[-1] = pdus[-1], pdus[1]
        if kind not in ("command-split", "no-command", "two-commands", "reorder"):
            pdus[target] = bytes(pdu)
        if self.dry:
            return
        self.report.kinds[f"p-data:{kind}"] += 1
        conn = Connection(self.node.port, sample.syntax)
        try:
            conn.sock.sendall(b"".join(pdus))
            conn.sock.shutdown(socket.SHUT_WR)
            status = conn.status()
            self.report.outcomes[f"p-data:status-{status if status is None else hex(status)}"] += 1
            if status == 0x0000:  # whatever arrived was acknowledged: it must be a whole instance
                problem = whole_on_disk(self.node, uid, data if kind == "command-split" else None)
                if problem:
                    self._fail(case, kind, f"success, but {problem}")
        finally:
            conn.close()

    def _store(self, case: int, kind: str, syntax: str, uid: str, data: bytes, broken: bool, fragments: int) -> None:
        conn = Connection(self.node.port, syntax)
        try:
            conn.sock.sendall(pdv(1, 0x03, c_store_command(uid)))
            step = max(1, -(-len(data) // fragments))
            pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
            for n, piece in enumerate(pieces):
                conn.sock.sendall(pdv(1, 0x02 if n == len(pieces) - 1 else 0x00, piece))
            status = conn.status()
        finally:
            conn.close()
        self.report.outcomes[f"{kind.split(':')[0]}:status-{status if status is None else hex(status)}"] += 1
        if status == 0x0000:
            if broken:
                self._fail(case, kind, "success for a data set known to be broken")
            elif problem := whole_on_disk(self.node, uid, data):
                self._fail(case, kind, f"success, but {problem}")

    def _stow_body(self, kind: str, boundary: str, parts: list[bytes]) -> bytes:
        """The multipart/related body of `parts`, broken as `kind` says."""
        headers = ["Content-Type: application/dicom\r\n" for _ in parts]
        if kind == "header-junk":
            headers[0] = self.rng.choice(
                [
                    "Content-Type: application/x\x01\x7fdicom\r\n",
                    "X: " + "y" * 70000 + "\r\n",
                    "Content-Type: application/dicom; transfer-syntax=\x00\r\n",
                    "Content-Transfer-Encoding: base64\r\n",
                ]
            )
        body = b"".join(
            f"--{boundary}\r\n{h}\r\n".encode("latin-1") + part + b"\r\n"
            for h, part in zip(headers, parts, strict=True)
        )
        body += f"--{boundary}--\r\n".encode()
        if kind == "boundary":
            body = body.replace(boundary.encode(), boundary[:-1].encode(), self.rng.randrange(1, 3))
        elif kind == "truncate-body":
            body = body[: self.rng.randrange(1, len(body))]
        elif kind == "no-closing":
            body = body[: body.rfind(b"--" + boundary.encode() + b"--")]
        return body

    def case_stow(self, case: int) -> None:
        boundary = "fz" + "".join(self.rng.choice("abcdef0123456789") for _ in range(12))
        parts = []
        expectations = []
        for _ in range(self.rng.randrange(1, 4)):
            sample = self.rng.choice([s for s in self.samples if s.syntax != ExplicitVRBigEndian])
            kind, data, broken = (
                mutate_data_set(self.rng, sample) if self.rng.random() < 0.7 else ("whole", sample.data, False)
            )
            uid, data = self._fresh(sample, data)
            parts.append(file_meta(CT, uid, sample.syntax) + data)
            expectations.append((uid, data, broken, kind))
        kind = self.rng.choice(["parts", "boundary", "header-junk", "truncate-body", "no-closing"])
        body = self._stow_body(kind, boundary, parts)
        if self.dry:
            return
        self.report.kinds[f"stow:{kind}"] += 1
        try:
            response = httpx.post(
                f"{self.node.url}/dicomweb/studies",
                content=body,
                timeout=60,
                headers={
                    "Authorization": f"Bearer {API_TOKEN}",
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                },
            )
        except httpx.HTTPError as exc:
            self._fail(case, kind, f"no HTTP answer: {type(exc).__name__}")
            return
        self.report.outcomes[f"stow:http-{response.status_code}"] += 1
        if response.status_code >= 500:
            self._fail(case, kind, f"HTTP {response.status_code}")
            return
        stored = set()
        if response.headers.get("content-type", "").startswith("application/dicom+json"):
            for item in response.json().get("00081199", {}).get("Value", []):
                stored.add(item.get("00081155", {}).get("Value", [""])[0])
        for uid, data, broken, part_kind in expectations:
            if uid in stored:
                if broken:
                    self._fail(case, f"stow:{part_kind}", "a broken part was stored")
                elif problem := whole_on_disk(self.node, uid, data):
                    self._fail(case, f"stow:{part_kind}", f"stored, but {problem}")

    def check(self, case: int) -> None:
        from tests.integration.test_hostile_peers import echo_from

        if not echo_from(self.node.port, "127.0.0.1"):
            self._fail(case, "check", "C-ECHO failed")
        rss = self.node.rss_kib()
        self.report.peak_rss_mb = max(self.report.peak_rss_mb, rss * 1024 / 1e6)
        if (rss - self.baseline_kib) * 1024 > MEMORY_BOUND_MB * 1e6:
            self._fail(case, "check", f"resident memory grew {(rss - self.baseline_kib) / 1024:.0f} MiB")

    def leftovers(self) -> list[Path]:
        deadline = time.monotonic() + 15
        while True:
            temps = [p for p in self.node.data_dir.rglob("*") if p.name.endswith(".tmp")]
            if not temps or time.monotonic() > deadline:
                return temps
            time.sleep(0.5)

    def run(self, cases: int, first: int = 1) -> Report:
        """Cases `first` to `cases` (the earlier ones are only drawn, see `dry`)."""
        started = time.monotonic()
        steps = [self.case_associate, self.case_p_data, self.case_data_set, self.case_data_set, self.case_stow]
        for case in range(1, cases + 1):
            self.dry = case < first
            try:
                self.rng.choice(steps)(case)
            except AssertionError as exc:
                self._fail(case, "harness", str(exc))
            except (OSError, ConnectionError):
                self.report.outcomes["connection-ended"] += 1
            if self.dry:
                continue
            self.report.cases += 1
            if case % CHECK_EVERY == 0 or case == cases:
                self.check(case)
        for temp in self.leftovers():
            self.report.failures.append(f"temporary file left: {temp}")
        if self.node.process.poll() is not None:
            self.report.failures.append(f"the node exited with {self.node.process.returncode}")
        self.report.seconds = time.monotonic() - started
        return self.report


def fuzz(folder: Path, cases: int, seed: int, first: int = 1) -> Report:
    node = serve(folder, node={"negotiation_timeout_s": 5.0, "pdu_timeout_s": 5.0, "network_timeout_s": 5.0})
    try:
        return Fuzzer(node, seed).run(cases, first)
    finally:
        node.stop()


def main() -> int:
    warnings.simplefilter("ignore")  # pydicom, reading back what the node stored
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--folder", type=Path, default=None, help="where the node keeps its data")
    parser.add_argument(
        "--only",
        default=None,
        metavar="FIRST[-LAST]",
        help="run only these cases of the seed's sequence (instead of --cases)",
    )
    args = parser.parse_args()
    first, last = 1, args.cases
    if args.only:
        low, _, high = args.only.partition("-")
        first, last = int(low), int(high or low)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="fracnode-fuzz-"))
    report = fuzz(folder, last, args.seed, first)
    print(
        json.dumps(
            {
                "cases": report.cases,
                "first": first,
                "seed": args.seed,
                "seconds": round(report.seconds, 1),
                "failures": report.failures[:50],
                "failure_count": len(report.failures),
                "peak_rss_mb": round(report.peak_rss_mb, 1),
                "kinds": dict(report.kinds),
                "outcomes": dict(report.outcomes),
            },
            indent=2,
        )
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
