"""What a merge shows while it runs: the bar's final line, and the one-off compile notice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meldkit.execute import pipeline
from meldkit.execute import progress as progress_module
from meldkit.execute.progress import COMPILE_NOTICE, Progress, final_line
from meldkit.execute.runner import RunOptions, execute_plan
from meldkit.execute.timings import RunStats, format_bytes, format_seconds
from meldkit.plan import plan_merge
from meldkit.plan.planner import MergePlan


def _linear(a: Path, b: Path) -> str:
    return (
        "merge_method: linear\nmodels:\n"
        f"  - model: {a}\n    parameters: {{weight: 0.3}}\n"
        f"  - model: {b}\n    parameters: {{weight: 0.7}}\n"
    )


@pytest.fixture
def plan(llama_family: tuple[Path, list[Path]]) -> MergePlan:
    _, (a, b) = llama_family
    return plan_merge(_linear(a, b))


@pytest.fixture
def bar_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Show the bar as on a terminal (captured stderr is not one)."""
    monkeypatch.setattr(Progress, "wanted", staticmethod(lambda quiet: not quiet))


def _last_line(err: str) -> str:
    # tqdm redraws with carriage returns; what stays on the terminal is the last piece.
    parts = [p for p in re.split(r"[\r\n]", err) if p.strip()]
    return parts[-1] if parts else ""


def _read_bytes(plan: MergePlan) -> int:
    return sum(s.info.nbytes for t in plan.tensors for s in t.sources)


def _written_bytes(plan: MergePlan) -> int:
    return sum(t.out_nbytes for t in plan.tensors)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4242, "0.42 s"), (12.44, "12.4 s"), (185.2, "3 min 05 s"), (7625, "2 h 07 min")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (512, "512 bytes"),
        (3_200_000_000, "3.2 GB"),
        (258_064_516, "258 MB"),
        (12_345_678, "12.3 MB"),
        (99_960, "100 KB"),
        (999_960, "1.0 MB"),
        (999_999_999, "1.0 GB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


def test_final_line_text() -> None:
    stats = RunStats(tensors=291, read_bytes=3_200_000_000, written_bytes=810_000_000)
    stats.elapsed = 12.4
    assert final_line(stats) == (
        "merged 291 tensors (3.2 GB read, 810 MB written) in 12.4 s, 258 MB/s"
    )
    stats.shards, stats.shards_reused = 9, 4
    assert final_line(stats).endswith("258 MB/s; 4 of 9 shards reused from the interrupted run")
    one = RunStats(tensors=1, read_bytes=2000, written_bytes=1000)
    one.elapsed = 0.5
    assert final_line(one) == "merged 1 tensor (2.0 KB read, 1.0 KB written) in 0.50 s, 4.0 KB/s"


def test_a_merge_with_the_bar_leaves_one_final_line(
    plan: MergePlan, tmp_path: Path, bar_on: None, capsys: pytest.CaptureFixture[str]
) -> None:
    execute_plan(plan, tmp_path / "out", RunOptions())
    err = capsys.readouterr().err
    assert "merging:" in err  # the bar was drawn
    expected = re.escape(
        f"merged {len(plan.tensors)} tensors ({format_bytes(_read_bytes(plan))} read, "
        f"{format_bytes(_written_bytes(plan))} written) in "
    )
    assert re.fullmatch(expected + r"\d+\.\d+ s, \d+(\.\d)? [KMG]B/s", _last_line(err)), err
    assert err.endswith("/s\n")
    assert sum(1 for piece in re.split(r"[\r\n]", err) if piece.startswith("merged ")) == 1


def test_no_final_line_when_quiet_or_not_on_a_terminal(
    plan: MergePlan,
    tmp_path: Path,
    bar_on: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    execute_plan(plan, tmp_path / "quiet", RunOptions(quiet=True))
    assert capsys.readouterr().err == ""
    monkeypatch.undo()  # captured stderr is not a terminal: no bar, no line
    assert Progress.wanted(False) is False
    execute_plan(plan, tmp_path / "pipe", RunOptions())
    assert capsys.readouterr().err == ""


def test_a_failed_merge_leaves_no_final_line(
    plan: MergePlan,
    tmp_path: Path,
    bar_on: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from meldkit.errors import MergeRuntimeError

    def broken(*args: object, **kw: object) -> None:
        raise MergeRuntimeError("broken on purpose")

    monkeypatch.setattr(pipeline.ComputeStage, "run", broken)
    with pytest.raises(MergeRuntimeError, match="broken on purpose"):
        execute_plan(plan, tmp_path / "out", RunOptions())
    err = capsys.readouterr().err
    assert "merged " not in err and not (tmp_path / "out").exists()


def _compiling_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the merge call a fresh numba function first, which compiles on that call exactly
    as a kernel does on its first call after an install."""
    numba = pytest.importorskip("numba")

    @numba.njit  # no cache=True: compiled in this process, whatever is on disk
    def plus_one(x: float) -> float:
        return x + 1.0

    real = pipeline.load_merge_function

    def with_kernel(spec: object) -> object:
        fn = real(spec)  # type: ignore[arg-type]

        def merge(*args: object) -> object:
            plus_one(1.0)
            return fn(*args)  # type: ignore[operator]

        return merge

    monkeypatch.setattr(pipeline, "load_merge_function", with_kernel)


def test_first_compile_is_announced_once_per_process_and_shown_in_the_bar(
    plan: MergePlan,
    tmp_path: Path,
    bar_on: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress_module, "_notice_given", False)
    _compiling_method(monkeypatch)
    notes: list[str] = []
    execute_plan(plan, tmp_path / "first", RunOptions(verbose=1), on_info=notes.append)
    assert notes.count(COMPILE_NOTICE) == 1
    assert COMPILE_NOTICE == "compiling CPU kernels (once per install; about 10-30 s)"
    assert notes.index(COMPILE_NOTICE) == 0  # said before the waiting, not after
    computing = [n for n in notes if n.startswith("timings: computing (linear) ")]
    assert len(computing) == 1 and ", of which compiling CPU kernels " in computing[0]
    err = capsys.readouterr().err
    assert "compiling CPU kernels]" in err  # the bar's status while it compiled
    assert _last_line(err).startswith(f"merged {len(plan.tensors)} tensors (")

    # A second merge in the same process compiles another function: no second notice.
    _compiling_method(monkeypatch)
    again: list[str] = []
    execute_plan(plan, tmp_path / "second", RunOptions(verbose=1), on_info=again.append)
    assert COMPILE_NOTICE not in again
    assert any(", of which compiling CPU kernels " in n for n in again)


def test_no_notice_when_nothing_compiles(
    plan: MergePlan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(progress_module, "_notice_given", False)
    monkeypatch.setenv("MELDKIT_REFERENCE_MATH", "1")  # no kernel at all
    notes: list[str] = []
    execute_plan(plan, tmp_path / "out", RunOptions(verbose=1), on_info=notes.append)
    assert COMPILE_NOTICE not in notes
    assert not any("compiling" in n for n in notes)


def test_watch_compiles_reports_each_compilation_once_and_only_inside_the_block() -> None:
    numba = pytest.importorskip("numba")
    from meldkit.kernels import runner

    @numba.njit
    def inner(x: float) -> float:
        return x * 2.0

    @numba.njit
    def outer(x: float) -> float:
        return inner(x) + 1.0

    events: list[object] = []
    with runner.watch_compiles(lambda: events.append("start"), events.append):
        outer(1.0)  # compiles outer and, nested in it, inner: one compilation
        outer(2.0)  # compiled already: nothing
    assert len(events) == 2 and events[0] == "start"
    assert isinstance(events[1], float) and events[1] > 0

    @numba.njit
    def later(x: float) -> float:
        return x

    later(1.0)  # outside the block: not reported
    assert len(events) == 2
