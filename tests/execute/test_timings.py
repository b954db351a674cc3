"""``verbose=1`` (the CLI's ``-v``): a successful merge ends with where its time went."""

from __future__ import annotations

from pathlib import Path

import pytest

from meldkit.execute.runner import RunOptions, execute_plan
from meldkit.execute.timings import RunStats, format_bytes, summary_lines
from meldkit.plan import plan_merge
from meldkit.plan.planner import MergePlan


@pytest.fixture
def plan(llama_family: tuple[Path, list[Path]]) -> MergePlan:
    _, (a, b) = llama_family
    return plan_merge(
        "merge_method: linear\nmodels:\n"
        f"  - model: {a}\n    parameters: {{weight: 0.3}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.7}}\n"
    )


def _stats() -> RunStats:
    stats = RunStats(
        planning=0.25,
        method="ties",
        read_threads=2,
        write_threads=1,
        tensors=291,
        read_seconds=9.8,
        read_bytes=3_200_000_000,
        compute_seconds=6.1,
        compile_seconds=4.0,
        write_seconds=1.2,
        written_bytes=810_000_000,
        wait_read=3.9,
        wait_write=0.2,
        pipeline_seconds=11.9,
        publish_seconds=0.05,
    )
    stats.elapsed = 12.4
    stats.per_tensor = {"a.weight": 0.1, "lm_head.weight": 1.2, "embed.weight": 1.1, "b": 0.2}
    return stats


def test_summary_text() -> None:
    assert summary_lines(_stats()) == [
        "timings: 12.4 s in all: merging 11.9 s, publishing 0.05 s (planning took 0.25 s before)",
        "timings: reading 3.2 GB 9.80 s on 2 threads",
        "timings: computing (ties) 6.10 s, of which compiling CPU kernels 4.00 s",
        "timings: writing 810 MB 1.20 s on 1 thread",
        "timings: the computation waited 3.90 s for reads and 0.20 s for writes",
        "timings: slowest tensors: lm_head.weight 1.20 s, embed.weight 1.10 s, b 0.20 s",
        "timings: where the time went: mostly computing, 51% of the merge",
    ]


def test_summary_names_the_stage_that_limited_the_merge() -> None:
    stats = _stats()
    stats.wait_read, stats.planning, stats.compile_seconds = 8.0, None, 0.0
    lines = summary_lines(stats)
    assert lines[0] == "timings: 12.4 s in all: merging 11.9 s, publishing 0.05 s"
    assert lines[2] == "timings: computing (ties) 6.10 s"
    assert lines[-1] == (
        "timings: where the time went: mostly waiting for the inputs to be read "
        "(a faster disk would help most), 67% of the merge"
    )


def test_verbose_merge_reports_its_timings(plan: MergePlan, tmp_path: Path) -> None:
    notes: list[str] = []
    execute_plan(plan, tmp_path / "out", RunOptions(verbose=1), on_info=notes.append)
    timings = [n for n in notes if n.startswith("timings: ")]
    assert len(timings) == 7 and timings == notes[-7:]  # at the very end, after publishing
    assert (tmp_path / "out" / "model.safetensors").is_file()
    read = sum(s.info.nbytes for t in plan.tensors for s in t.sources)
    written = sum(t.out_nbytes for t in plan.tensors)
    assert timings[0].startswith("timings: ") and " in all: merging " in timings[0]
    assert timings[1].startswith(f"timings: reading {format_bytes(read)} ")
    assert timings[2].startswith("timings: computing (linear) ")
    assert timings[3].startswith(f"timings: writing {format_bytes(written)} ")
    assert timings[4].startswith("timings: the computation waited ")
    slowest = timings[5].removeprefix("timings: slowest tensors: ").split(", ")
    names = {t.name for t in plan.tensors}
    assert len(slowest) == 3 and all(s.rsplit(" ", 2)[0] in names for s in slowest)
    assert timings[6].startswith("timings: where the time went: mostly ")


def test_no_timings_without_verbose(plan: MergePlan, tmp_path: Path) -> None:
    notes: list[str] = []
    execute_plan(plan, tmp_path / "out", RunOptions(), on_info=notes.append)
    assert not any(n.startswith("timings: ") for n in notes)


def test_no_timings_after_a_failure(
    plan: MergePlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meldkit.errors import MergeRuntimeError
    from meldkit.execute import pipeline

    def broken(*args: object, **kw: object) -> None:
        raise MergeRuntimeError("broken on purpose")

    monkeypatch.setattr(pipeline.ComputeStage, "run", broken)
    notes: list[str] = []
    with pytest.raises(MergeRuntimeError):
        execute_plan(plan, tmp_path / "out", RunOptions(verbose=1), on_info=notes.append)
    assert not any(n.startswith("timings: ") for n in notes)
