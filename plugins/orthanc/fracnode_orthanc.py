"""fracnode's Orthanc plugin: hands each stable study to fracnode, once, without blocking Orthanc.

Runs inside Orthanc's Python plugin (Debian `orthanc-python` 4.0, Orthanc >= 1.10) with the
standard library only. Orthanc's change callback only puts a task on a queue; one worker thread
of this plugin decides and hands over:

- `store` mode (default): an asynchronous Orthanc job `POST /modalities/{Modality}/store` sends
  the study's original instances to fracnode by C-STORE (PS3.4 Annex B); fracnode returns its
  SR and SEG by C-STORE to Orthanc (its `sender` or `dimse` destination).
- `pull` mode: `POST {Url}/api/v1/studies/{StudyInstanceUID}/analyze` asks fracnode to fetch the
  study over DICOMweb (WADO-RS, PS3.18 10.4) from its peer for this Orthanc.

Every hand-over is recorded in a SQLite file (Orthanc study IDs only, no patient data) with the
instances it covered: a study is handed over again only when instances arrive that were never
handed over. fracnode's own results (Manufacturer "fracnode", PS3.3 C.7.5.1) never count, so
their arrival, which makes Orthanc see the study as stable again, hands nothing over. The
Explorer's "Analyze with fracnode" button forces a hand-over.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import orthanc  # provided by Orthanc's Python plugin, not by PyPI
from fracnode_handover import (
    EXPLORER_BUTTON,
    STATUS_LIMIT,
    Settings,
    State,
    decide,
    retry_delay,
    series_of,
)

# -- the worker: the only place that talks to Orthanc's REST API or to fracnode ------------------


@dataclass(frozen=True)
class Task:
    kind: str  # study | job | startup | stop
    resource: str = ""
    reason: str = ""  # study: stable | forced | catch-up; job: success | failure


class HandOverError(Exception):
    """A hand-over could not be started; the message says why."""


def _get(uri: str) -> Any:
    return json.loads(orthanc.RestApiGet(uri))


def _post(uri: str, body: Any) -> Any:
    return json.loads(orthanc.RestApiPost(uri, json.dumps(body)))


class Worker:
    def __init__(self, settings: Settings, state: State) -> None:
        self.settings = settings
        self.state = state
        self.tasks: queue.Queue[Task] = queue.Queue()
        self._retries: list[tuple[float, int]] = []  # (not_before, hand-over id)
        self.decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=STATUS_LIMIT)
        self.caught_up = False  # the startup task has run
        self._thread = threading.Thread(target=self._run, name="fracnode-handover", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.tasks.put(Task("stop"))
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            wait = max(self._retries[0][0] - time.time(), 0.0) if self._retries else None
            try:
                task = self.tasks.get(timeout=wait)
            except queue.Empty:
                self._due_retries()
                continue
            if task.kind == "stop":
                return
            try:
                {"study": self._study, "job": self._job, "startup": self._startup}[task.kind](task)
            except Exception as exc:  # noqa: BLE001 - the worker outlives any one task
                orthanc.LogError(f"fracnode: {task.kind} {task.resource}: {type(exc).__name__}: {exc}")

    def _study(self, task: Task) -> None:
        try:
            series = series_of(_get(f"/studies/{task.resource}/series"))
        except orthanc.OrthancException:
            orthanc.LogWarning(f"fracnode: study {task.resource} is gone; nothing handed over")
            return
        forced = task.reason == "forced"
        decision = decide(series, self.state.handed(task.resource), self.settings, forced)
        self.decisions.appendleft(
            {
                "Study": task.resource,
                "Trigger": task.reason,
                "Decision": decision.reason,
                "Instances": len(decision.instances),
                "At": time.time(),
            }
        )
        if not decision.instances:
            orthanc.LogInfo(f"fracnode: study {task.resource}: {decision.reason}")
            return
        if forced and self.settings.mode == "store":
            self._ask_again(task.resource)
        handover = self.state.record(
            task.resource, decision.instances, task.reason, self.settings.mode, "", "submitted"
        )
        self._hand_over(handover, task.resource, decision.instances, attempts=1)

    def _hand_over(self, handover: int, study: str, instances: tuple[str, ...], attempts: int) -> None:
        try:
            if self.settings.mode == "store":
                job = _post(
                    f"/modalities/{self.settings.modality}/store",
                    {"Resources": list(instances), "Asynchronous": True, "Permissive": False},
                )
                self.state.update(handover, job=str(job["ID"]), state="submitted", attempts=attempts, error="")
                orthanc.LogWarning(
                    f"fracnode: study {study}: {len(instances)} instance(s) handed over"
                    f" to modality {self.settings.modality!r} (job {job['ID']})"
                )
            else:
                self._pull(study)
                self.state.update(handover, state="sent", attempts=attempts, error="")
                orthanc.LogWarning(f"fracnode: study {study}: fracnode asked to pull it")
        except (orthanc.OrthancException, HandOverError, OSError) as exc:
            self._failed(handover, attempts, f"{type(exc).__name__}: {exc}")

    def _ask_again(self, study: str) -> None:
        """A forced hand-over in store mode: fracnode acknowledges instances it already holds
        without analysing them again, so ask it (with `Url`/`Token`) to analyse its copy anew;
        a study it does not hold yet (404) is analysed when the C-STORE below delivers it."""
        if not self.settings.url:
            orthanc.LogWarning(
                f"fracnode: study {study}: sent again; fracnode analyses a study it already"
                " holds again only when asked: set Fracnode.Url and Token so the button asks"
            )
            return
        uid = _get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
        try:
            answer = self._fracnode(f"/api/v1/studies/{uid}/analyze", {})
            orthanc.LogWarning(f"fracnode: study {study}: {answer.get('message', 'analysis requested')}")
        except HandOverError as exc:
            orthanc.LogWarning(f"fracnode: study {study}: {exc}; the study is sent as it is")

    def _fracnode(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"{self.settings.url}{path}",
            method="POST",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.settings.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise HandOverError(f"fracnode answered HTTP {exc.code}: {exc.read()[:300]!r}") from exc
        except (OSError, ValueError) as exc:
            raise HandOverError(f"cannot ask fracnode: {exc}") from exc

    def _pull(self, study: str) -> None:
        uid = _get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
        self._fracnode(f"/api/v1/studies/{uid}/analyze", {"peer": self.settings.peer})

    def _failed(self, handover: int, attempts: int, error: str) -> None:
        if attempts >= self.settings.max_attempts:
            self.state.update(handover, state="failed", attempts=attempts, error=error)
            orthanc.LogError(
                f"fracnode: hand-over {handover} failed after {attempts} attempt(s): {error};"
                " the Explorer's button hands the study over again"
            )
            return
        not_before = time.time() + retry_delay(self.settings, attempts)
        self.state.update(handover, state="retrying", attempts=attempts, error=error, not_before=not_before)
        heapq.heappush(self._retries, (not_before, handover))
        orthanc.LogWarning(f"fracnode: hand-over {handover} attempt {attempts} failed: {error}; retrying")

    def _due_retries(self) -> None:
        while self._retries and self._retries[0][0] <= time.time():
            _, handover = heapq.heappop(self._retries)
            rows = [r for r in self.state.in_state("retrying") if r["id"] == handover]
            if rows:
                row = rows[0]
                self._hand_over(handover, row["study"], tuple(json.loads(row["instances"])), row["attempts"] + 1)

    def _job(self, task: Task) -> None:
        row = self.state.by_job(task.resource)
        if row is None or row["state"] != "submitted":
            return  # another plugin's or a person's job
        if task.reason == "success":
            self.state.update(row["id"], state="sent")
        else:
            try:
                error = str(_get(f"/jobs/{task.resource}").get("ErrorDescription", "job failed"))
            except orthanc.OrthancException:
                error = "job failed"
            self._failed(row["id"], row["attempts"], error)

    def _startup(self, task: Task) -> None:
        """Define fracnode's modality; finish what a restart interrupted: jobs, retries, missed studies."""
        if self.settings.host:
            orthanc.RestApiPut(f"/modalities/{self.settings.modality}", json.dumps(self.settings.modality_definition))
        for row in self.state.in_state("retrying"):
            heapq.heappush(self._retries, (row["not_before"], row["id"]))
        for row in self.state.in_state("submitted"):
            try:
                job_state = _get(f"/jobs/{row['job']}")["State"] if row["job"] else "Failure"
            except orthanc.OrthancException:
                job_state = "Failure"  # forgotten by Orthanc: send again rather than lose it
            if job_state == "Success":
                self.state.update(row["id"], state="sent")
            elif job_state == "Failure":
                self._failed(row["id"], row["attempts"], "job unfinished when Orthanc stopped")
        self._catch_up()
        self.caught_up = True

    def _catch_up(self) -> None:
        """Check the studies in Orthanc's change log since the last start.

        Orthanc forgets studies that were not yet stable when it stopped: they never become
        stable after the restart. The first start only sets the cursor, so installing the plugin
        does not hand over a whole archive.
        """
        cursor = self.state.meta("changes_cursor")
        if cursor is None:
            self.state.set_meta("changes_cursor", str(_get("/changes?last")["Last"]))
            return
        since, studies = int(cursor), {}  # type: dict[str, None]
        while True:
            page = _get(f"/changes?since={since}&limit=1000")
            for change in page["Changes"]:
                if change["ChangeType"] in ("NewStudy", "StableStudy"):
                    studies[change["ID"]] = None
                elif change["ChangeType"] == "NewSeries":
                    with contextlib.suppress(orthanc.OrthancException):  # deleted since
                        studies[_get(f"/series/{change['ID']}")["ParentStudy"]] = None
            since = int(page["Last"])
            if page["Done"] or not page["Changes"]:
                break
        if self.settings.automatic:
            for study in studies:
                self._study(Task("study", study, "catch-up"))
        self.state.set_meta("changes_cursor", str(since))


# -- Orthanc glue: callbacks, REST routes, Explorer -----------------------------------------------

EXPLORER_JS = """
$('#study').live('pagebeforecreate', function() {
  var item = $('<li data-icon="search"><a href="#" id="study-fracnode">BUTTON</a></li>');
  item.insertAfter($('#study-store').parent());
  $('#study-fracnode').live('click', function() {
    if (!$.mobile.pageData) { return false; }
    $.ajax({
      url: '../fracnode/studies/' + $.mobile.pageData.uuid + '/analyze', type: 'POST', dataType: 'json',
      success: function(answer) { alert('fracnode: the study is queued for analysis' +
        (answer.AnalyzeAgain ? ' (fracnode is asked to analyse it again)' : '')); },
      error: function(xhr) { alert('fracnode: cannot queue the study (HTTP ' + xhr.status + ')'); }
    });
    return false;
  });
});
""".replace("BUTTON", EXPLORER_BUTTON)


class Plugin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State(settings.state_file)
        self.worker = Worker(settings, self.state)
        self.callbacks = 0
        self.callback_max_s = 0.0

    def on_change(self, change_type: int, level: int, resource: str) -> None:
        """Orthanc's change callback: only puts a task on the queue, never waits (but at stop)."""
        started = time.perf_counter()
        kinds = orthanc.ChangeType
        if change_type == kinds.STABLE_STUDY and self.settings.automatic:
            self.worker.tasks.put_nowait(Task("study", resource, "stable"))
        elif change_type in (kinds.JOB_SUCCESS, kinds.JOB_FAILURE):
            success = change_type == kinds.JOB_SUCCESS
            self.worker.tasks.put_nowait(Task("job", resource, "success" if success else "failure"))
        elif change_type == kinds.ORTHANC_STARTED:
            self.worker.tasks.put_nowait(Task("startup"))
        elif change_type == kinds.ORTHANC_STOPPED:
            self.worker.stop()
            self.state.close()
            return
        self.callbacks += 1
        self.callback_max_s = max(self.callback_max_s, time.perf_counter() - started)

    def analyze(self, output: Any, uri: str, **request: Any) -> None:
        """POST /fracnode/studies/{id}/analyze: queue a forced hand-over (the Explorer's button)."""
        if request["method"] != "POST":
            output.SendMethodNotAllowed("POST")
            return
        study = request["groups"][0]
        try:
            orthanc.RestApiGet(f"/studies/{study}")
        except orthanc.OrthancException:
            body = json.dumps({"Error": f"no study {study} in Orthanc"})  # ASCII: its length is its size
            output.SendHttpStatus(404, body, len(body))
            return
        self.worker.tasks.put_nowait(Task("study", study, "forced"))
        answer = {
            "Study": study,
            "Queued": True,
            "AnalyzeAgain": self.settings.mode == "pull" or bool(self.settings.url),
        }
        output.AnswerBuffer(json.dumps(answer), "application/json")

    def status(self, output: Any, uri: str, **request: Any) -> None:
        """GET /fracnode/status: settings, queue, callback timing and the recent hand-overs."""
        if request["method"] != "GET":
            output.SendMethodNotAllowed("GET")
            return
        answer = {
            "Mode": self.settings.mode,
            "Modality": self.settings.modality,
            "Automatic": self.settings.automatic,
            "Modalities": list(self.settings.modalities),
            "Queued": self.worker.tasks.qsize(),
            "Callbacks": self.callbacks,
            "CallbackMaxMs": round(self.callback_max_s * 1000, 3),
            "CaughtUp": self.worker.caught_up,
            "HandOvers": self.state.recent(),
            "Decisions": list(self.worker.decisions),
        }
        output.AnswerBuffer(json.dumps(answer, indent=2), "application/json")


def register() -> Plugin | None:
    settings = Settings.from_config(json.loads(orthanc.GetConfiguration()))
    if not settings.enabled:
        orthanc.LogWarning("fracnode: plugin disabled (Fracnode.Enabled is false)")
        return None
    plugin = Plugin(settings)
    plugin.worker.start()
    orthanc.RegisterOnChangeCallback(plugin.on_change)
    orthanc.RegisterRestCallback("/fracnode/studies/([^/]+)/analyze", plugin.analyze)
    orthanc.RegisterRestCallback("/fracnode/status", plugin.status)
    orthanc.ExtendOrthancExplorer(EXPLORER_JS)
    orthanc.LogWarning(
        f"fracnode: plugin ready ({settings.mode} mode, modality {settings.modality!r}, state {settings.state_file})"
    )
    return plugin


PLUGIN = register()
