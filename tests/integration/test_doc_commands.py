"""Every shell command of README.md, docs/*.md and the Orthanc plugin's README, run as printed.

The commands run with bash (`-e -o pipefail`, so a failing step fails the command) in a sandbox
checkout: a temporary folder whose entries link to this repository's (its `.venv` included, not
its `fracnode-data/`), with `../shared` beside it, so the relative paths a reader types work.
`make serve`, the README's first command, starts the node there once for all pages. What runs
differs from what is printed only by this substitution (the printed text is what the failure
messages quote):

- the default ports are replaced by free loopback ones: `11112` (DICOM) and `8080` (HTTP) in the
  command text, with `FRACNODE_PORT`, `FRACNODE_HTTP_PORT`, `FRACNODE_BIND=127.0.0.1` and
  `FRACNODE_WEB__BIND=127.0.0.1` in the environment (the variables the configuration reads);
  the developer's own `FRACNODE_*` variables are dropped;
- `<StudyInstanceUID>` is the study of the sample the pages send (`RG3_J2KR.dcm`), filled in once
  the node has finished analysing it, as the text before that command says.

A command that cannot run here carries a `not testable here` mark with its reason (see
`tests/support/doccommands.py`); those are listed, not run. Some pages' promises are checked
beyond the exit status (`PROMISES`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from tests.conftest import CR_SAMPLES, REPO, SHARED_DATA, wait_until
from tests.support.doccommands import Command, commands_in
from tests.support.orthanc import free_port

pytestmark = pytest.mark.slow

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "plugins" / "orthanc" / "README.md"]
SERVE = "make serve"  # the README's first command: started once by the `sandbox` fixture
SAMPLE = CR_SAMPLES / "RG3_J2KR.dcm"
COMMAND_TIMEOUT_S = 180
NODE_READY_TIMEOUT_S = 300  # loads three models, on a CPU shared with other work
NOT_LINKED = {".git", "fracnode-data", ".pytest_cache"}


@dataclass
class Ran:
    command: Command
    run_as: str
    stdout: str
    stderr: str


@dataclass
class Sandbox:
    root: Path
    dicom_port: int
    http_port: int
    env: dict[str, str]
    log: Path
    serve: subprocess.Popen[bytes] | None = None
    study_jobs_seen: list[int] = field(default_factory=list)  # job ids when <StudyInstanceUID> was filled

    def substitute(self, text: str) -> str:
        text = re.sub(r"(?<![\d.])11112(?!\d)", str(self.dicom_port), text)
        text = re.sub(r"(?<![\d.])8080(?!\d)", str(self.http_port), text)
        if "<StudyInstanceUID>" in text:
            text = text.replace("<StudyInstanceUID>", self.analysed_sample_study())
        return text

    def api(self, path: str) -> object:
        token = (self.root / "fracnode-data" / "api-token").read_text().strip()
        answer = httpx.get(
            f"http://127.0.0.1:{self.http_port}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        answer.raise_for_status()
        return answer.json()

    def jobs_of(self, study_uid: str) -> list[dict[str, object]]:
        return list(self.api(f"/api/v1/jobs?study_uid={study_uid}"))  # type: ignore[call-overload]

    def analysed_sample_study(self) -> str:
        """The sample's study, once every job it has is finished (the text says "a few seconds later")."""
        uid = str(dcmread(SAMPLE, stop_before_pixels=True).StudyInstanceUID)

        def finished() -> list[dict[str, object]] | None:
            jobs = self.jobs_of(uid)
            ended = jobs and all(j["state"] not in ("queued", "running") for j in jobs)
            return jobs if ended else None

        jobs = wait_until(finished, timeout_s=COMMAND_TIMEOUT_S, interval_s=0.5)
        self.study_jobs_seen = [int(j["id"]) for j in jobs]  # type: ignore[call-overload]
        return uid

    def run(self, command: Command) -> Ran:
        run_as = self.substitute(command.text)
        process = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", run_as],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            pytest.fail(
                f"{command.where()}: `{command.text}` still ran after {COMMAND_TIMEOUT_S} s"
                " (a command that keeps running needs a not-testable mark, or a place in this test)"
            )
        assert process.returncode == 0, (
            f"{command.where()}: `{command.text}` exited {process.returncode} (run here as `{run_as}`)\n"
            f"stdout:\n{stdout[-3000:]}\nstderr:\n{stderr[-3000:]}"
        )
        return Ran(command, run_as, stdout, stderr)


def _start_serve(box: Sandbox) -> None:
    stream = box.log.open("wb")
    box.serve = subprocess.Popen(
        ["bash", "-c", box.substitute(SERVE)],
        cwd=box.root,
        env=box.env,
        stdout=stream,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stream.close()

    def ready() -> bool:
        assert box.serve is not None
        if box.serve.poll() is not None:
            raise AssertionError(f"`{SERVE}` exited with {box.serve.returncode}:\n{box.log.read_text()[-4000:]}")
        return "fracnode: models" in box.log.read_text()

    wait_until(ready, timeout_s=NODE_READY_TIMEOUT_S, interval_s=0.5)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    top = tmp_path_factory.mktemp("doc-commands")
    root = top / "fracnode"
    root.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in NOT_LINKED:
            (root / entry.name).symlink_to(entry)
    (top / "shared").symlink_to(SHARED_DATA.parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRACNODE_")}
    box = Sandbox(root, free_port(), free_port(), env, top / "serve.log")
    env.update(
        FRACNODE_BIND="127.0.0.1",
        FRACNODE_WEB__BIND="127.0.0.1",
        FRACNODE_PORT=str(box.dicom_port),
        FRACNODE_HTTP_PORT=str(box.http_port),
    )
    # `make serve` installs the venv when pyproject.toml is newer: never from a test
    stale = subprocess.run(["make", "-q", "install"], cwd=root, env=env, capture_output=True, check=False)
    if stale.returncode != 0:
        pytest.fail("the venv is older than pyproject.toml: run `make install` (or `make test`) first")
    _start_serve(box)
    try:
        yield box
    finally:
        assert box.serve is not None
        os.killpg(box.serve.pid, signal.SIGTERM)
        try:
            box.serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(box.serve.pid, signal.SIGKILL)
            box.serve.wait()


# -- what some pages promise beyond their commands' exit status ----------------------------------


def _readme(box: Sandbox, ran: list[Ran]) -> None:
    shown = [c.text.split("#")[0].strip() for c in commands_in(REPO / "README.md")]
    assert shown[0] == SERVE, "the README's first command is how the sandbox's node starts"
    banner = box.log.read_text()
    assert f"listening as FRACNODE on 127.0.0.1:{box.dicom_port}" in banner  # "AE title FRACNODE on port 11112"
    assert f"http://localhost:{box.http_port}/" in banner
    assert f"the token in {box.root / 'fracnode-data' / 'api-token'}" in banner
    assert f"folder {box.root / 'fracnode-data' / 'results'}" in banner
    assert re.search(r"radiograph_fracture [\d.]+, ROC AUC", banner), banner

    again = next(r for r in ran if "analyze-again" in r.command.text)
    assert "queued for a new analysis" in again.stdout, again.stdout
    uid = str(dcmread(SAMPLE, stop_before_pixels=True).StudyInstanceUID)
    results = box.root / "fracnode-data" / "results"

    def new_revision_delivered() -> list[dict[str, object]]:
        return [
            j
            for j in box.jobs_of(uid)
            if int(j["id"]) not in box.study_jobs_seen  # type: ignore[call-overload]
            and j["state"] == "done"
            and j["deliveries"]
            and all(d["delivered"] == d["objects"] for d in j["deliveries"])
        ]  # type: ignore[attr-defined]

    wait_until(new_revision_delivered, timeout_s=COMMAND_TIMEOUT_S, interval_s=0.5)
    names = sorted(p.name for p in (results / uid).glob("*.dcm"))
    # a radiograph's SEG goes only where a destination asks for it (overlays: [radiograph_seg])
    assert any(n.startswith("SR_") for n in names) and not any(n.startswith("SEG_") for n in names), names
    assert list((results / uid / "superseded").rglob("SR_*.dcm")), "the first revision's SR was not set aside"
    assert (results / "README.txt").is_file()


def _connecting(box: Sandbox, ran: list[Ran]) -> None:
    stow = next(r for r in ran if r.command.text.startswith("curl"))
    answer = json.loads(stow.stdout)
    stored = [item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]]
    assert stored == [str(dcmread(SAMPLE, stop_before_pixels=True).SOPInstanceUID)], answer
    assert "00081198" not in answer  # no FailedSOPSequence


def _operations(box: Sandbox, ran: list[Ran]) -> None:
    assert "SUCCESS" in next(r for r in ran if r.command.text.startswith("promtool")).stdout
    with sqlite3.connect(box.root / "backup.sqlite") as backup:  # the online backup is a whole index
        assert backup.execute("SELECT COUNT(*) FROM instances").fetchone()[0] >= 1


PROMISES: dict[str, Callable[[Sandbox, list[Ran]], None]] = {
    "README.md": _readme,
    "docs/connecting.md": _connecting,
    "docs/operations.md": _operations,
}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_command_of_the_page_runs_as_printed_or_says_why_not(page: Path, sandbox: Sandbox) -> None:
    ran: list[Ran] = []
    not_run: list[str] = []
    for command in commands_in(page):
        if command.not_testable:
            not_run.append(f"{command.where()}: {command.text.splitlines()[0]}  ({command.not_testable})")
        elif command.text.split("#")[0].strip() == SERVE:
            # the sandbox's node was started by this very command; it must have said where it is
            assert sandbox.serve is not None and sandbox.serve.poll() is None, f"`{SERVE}` stopped"
        else:
            ran.append(sandbox.run(command))
    relative = str(page.relative_to(REPO))
    if relative in PROMISES:
        PROMISES[relative](sandbox, ran)
    print(f"{relative}: {len(ran)} command(s) run; not testable here: {not_run or 'none'}")
