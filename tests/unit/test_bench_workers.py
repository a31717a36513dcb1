"""The pieces `python -m bench.workers` rests on; the benchmark itself is run by hand (bench/RESULTS.md)."""

from __future__ import annotations

import pytest

from bench.workers import Layout, Run, report


@pytest.mark.parametrize(
    ("text", "layout"),
    [
        ("4", Layout(4)),
        ("1w2", Layout(1, threads=2)),
        ("4t1", Layout(4, intra_op=1)),
        ("2w3t1", Layout(2, threads=3, intra_op=1)),
    ],
)
def test_a_layout_is_parsed_from_its_text_and_written_back_the_same(text: str, layout: Layout) -> None:
    assert Layout.parse(text) == layout
    assert str(layout) == text


@pytest.mark.parametrize("text", ["", "0", "x", "1w0", "2t0", "w2", "1t1w2"])
def test_a_layout_without_processes_or_threads_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="use N, NwT"):
        Layout.parse(text)


def test_a_layouts_processes_get_their_worker_threads_and_intra_op_threads_but_no_inherited_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRACNODE_PORT", "11112")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    plain, pinned = Layout(2, threads=3).environment(), Layout(4, intra_op=1).environment()
    assert plain["FRACNODE_WORKERS"] == "3" and "OMP_NUM_THREADS" not in plain
    assert pinned["FRACNODE_WORKERS"] == "1" and pinned["OMP_NUM_THREADS"] == "1"
    assert "FRACNODE_PORT" not in plain and "FRACNODE_PORT" not in pinned


def _run(layout: Layout, started: tuple[float, ...], finished: tuple[float, ...], worker_cpu_s: float) -> Run:
    return Run(
        layout=layout,
        started=started,
        finished=finished,
        spawned_at=90.0,
        startup_s=8.0,
        model_load_s=(6.0,) * layout.processes,
        window_s=10.0,
        worker_cpu_s=worker_cpu_s,
        dispatcher_cpu_s=0.1,
        server_cpu_s=0.2,
        busy_s=20.0,
        jobs_per_process=(2,) * layout.processes,
        load_before="3.00, 3.10, 3.20",
        load_after="3.50, 3.20, 3.20",
    )


def test_a_runs_rate_is_its_jobs_over_the_first_start_to_the_last_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bench.workers.CORES", 2)
    run = _run(Layout(2), started=(100.0, 101.0, 102.0, 103.0), finished=(101.0, 103.0, 104.0, 108.0), worker_cpu_s=5.0)
    assert run.span_s == 8.0 and run.rate == 0.5
    assert run.wall_s == 18.0  # from starting the processes, model loading included
    assert run.job_median_s == 2.0  # job times 1, 2, 2, 5
    assert run.cpu_per_job_s == 1.25
    assert run.workers_share == 0.25 and run.machine_busy == 1.0


def test_the_report_gives_each_layouts_median_rate_against_one_process() -> None:
    def runs(layout: Layout, spans: tuple[float, ...]) -> list[Run]:
        return [_run(layout, (0.0, 0.0), (span, span), 1.0) for span in spans]

    text = report([*runs(Layout(1), (4.0, 2.0, 8.0)), *runs(Layout(2), (1.0, 2.0, 4.0))], [Layout(1), Layout(2)], 2)
    one, two = (line.split(" | ") for line in text.splitlines()[2:])
    assert one[:4] == ["| 1 (1 process × 1 worker thread, 2 intra-op)", "**0.50**", "0.50, 1.00, 0.25", "1.00×"]
    assert two[:4] == ["| 2 (2 processes × 1 worker thread, 2 intra-op)", "**1.00**", "2.00, 1.00, 0.50", "2.00×"]
    assert two[-2:] == ["2/2, 2/2, 2/2", "3.00 → 3.50; 3.00 → 3.50; 3.00 → 3.50 |"]
