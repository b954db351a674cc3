"""``meldkit multi`` and ``meldkit plan`` on multi-stage files, end to end, by their text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meldkit.cli.main import main
from meldkit.io.sizes import format_size


def test_plan_shows_the_whole_chain(chain_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(chain_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if line.startswith("stage ")]
    assert headers == [
        "stage 1/3 'ab' -> <intermediate-dir>/ab [to merge]",
        "stage 2/3 'c' -> <intermediate-dir>/c [to merge]",
        "stage 3/3 final -> <out> [to merge]",
    ]
    final = lines.index("stage 3/3 final -> <out> [to merge]")
    assert lines[final + 1 : final + 5] == [
        "  method: slerp",
        "  inputs:",
        "    - <ab> (21 tensors, 2 layers)",  # the stage's skeleton, named by the stage
        "    - <c> (21 tensors, 2 layers)",
    ]
    # Each tiny model holds 6736 float32 values (embeddings and LM head 64x16, per layer
    # q/o 16x16, k/v 8x16, three 32x16 MLP matrices, two norms of 16; a final norm): the
    # first two stages read two models each, the last their two outputs; each writes one.
    data = 6736 * 4
    shard = data + _header_bytes(chain_file)
    assert lines[-6:] == [
        "chain: 3 stages to merge, 0 streamed, 0 cached",
        f"  bytes to read: {format_size(6 * data)}",
        f"  bytes to write: {format_size(3 * shard)}",
        # The largest working set: the 64x16 embedding, raw inputs twice (reading ahead) plus
        # two inputs and three temporaries in float32.
        f"  estimated peak memory: {format_size(2 * 2 * 4096 + 1024 * 4 * 5)}",
        "  estimated time: under 1 s (disk I/O at 500.00 MB/s; math not counted)",
        "plan OK: nothing was computed (run it with `meldkit multi`)",
    ]


def _header_bytes(chain_file: Path) -> int:
    """The header size of a stage's shard: its file size less the 6736 float32 values."""
    from meldkit.multi.stages import parse_stages, resolve_stage
    from meldkit.plan import plan_merge

    first = parse_stages(chain_file.read_text()).stages[0]
    plan = plan_merge(resolve_stage(first, {}))
    return plan.shards[0].data_start


def test_plan_json_totals_add_up(chain_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(chain_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    stages = doc["stages"]
    assert [s["name"] for s in stages] == ["ab", "c", None]
    assert [s["needs"] for s in stages] == [[], [], ["ab", "c"]]
    # The final stage reads exactly the data the first two write (headers aside).
    assert stages[2]["bytes_to_read"] == 2 * 6736 * 4
    for s in stages:  # nothing is cached or streamed: each stage as its own plan says
        assert s["bytes_to_write"] == s["plan"]["output"]["bytes_to_write"] > 6736 * 4
        assert s["peak_memory"] == s["plan"]["output"]["peak_memory_estimate"]
    assert doc["totals"]["bytes_to_read"] == sum(s["bytes_to_read"] for s in stages)
    assert doc["totals"]["bytes_to_write"] == sum(s["bytes_to_write"] for s in stages)
    assert doc["totals"]["peak_memory"] == max(s["peak_memory"] for s in stages)
    assert stages[2]["plan"]["inputs"][0]["model"] == "<ab>"


def test_merge_points_to_multi(chain_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["merge", str(chain_file), str(chain_file.parent / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {chain_file}: holds 3 YAML documents, a multi-stage (mergekit-multi) recipe of "
        "3 merges: ab, c; `meldkit merge` runs a single recipe",
        f"hint: use `meldkit multi {chain_file} --out OUT --intermediate-dir DIR` "
        "(`meldkit plan` shows the whole chain)",
    ]


def test_every_stage_is_checked_before_anything_runs(
    tmp_path: Path, family: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        f"name: a\nmerge_method: linearr\nmodels: [{family['ft1']}]\n---\n"
        "merge_method: slerp\nmodels: [{model: a}]\nbase_model: a\nparameterz: {t: 0.5}\n---\n"
        f"name: b\nmerge_method: linear\nmodels: [{{model: {family['ft1']}}}]\nslices: []\n"
    )
    args = ["multi", str(recipe), "--out", str(tmp_path / "o"), "-I", str(tmp_path / "i"), "-v"]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: 2 problems found while planning:",
        "  - stage 'a': unknown merge_method 'linearr'. Did you mean 'linear', 'dare_linear' or "
        "'della_linear'?",
        "  - stage 'b': give exactly one of 'models', 'slices' or 'modules' (found models, slices)",
        "hint: fix the stage each problem names",
    ]
    assert not (tmp_path / "o").exists()


def test_multi_runs_and_reports(
    tmp_path: Path, chain_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, inter = tmp_path / "out", tmp_path / "inter"
    assert main(["multi", str(chain_file), "--out", str(out), "-I", str(inter)]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"merged 3 stage(s); the final model is in {out}\n"
    assert f"note: stage 'ab': merging into {inter.resolve() / 'ab'}" in captured.err
    args = ["multi", str(chain_file), "--out-path", str(out), "-I", str(inter), "--overwrite"]
    assert main(args) == 0
    assert capsys.readouterr().out == (
        f"merged 1 stage(s), reused 2 cached; the final model is in {out}\n"
    )
    assert sorted(p.name for p in inter.iterdir()) == [
        "ab",
        "ab.meldkit-stage.json",
        "c",
        "c.meldkit-stage.json",
    ]


def test_plan_of_a_streamed_chain(
    tmp_path: Path, chain_file: Path, family: dict[str, Path]
) -> None:
    from meldkit.multi import ChainOptions, describe_chain, plan_chain
    from meldkit.multi.summary import chain_totals

    chain = plan_chain(chain_file, ChainOptions(tmp_path / "i", stream=True), tmp_path / "s")
    lines = describe_chain(chain).splitlines()
    assert [line for line in lines if line.startswith("stage ")] == [
        f"stage 1/3 'ab' -> {(tmp_path / 'i').resolve() / 'ab'} [streamed into final (not written)]",
        f"stage 2/3 'c' -> {(tmp_path / 'i').resolve() / 'c'} [streamed into final (not written)]",
        "stage 3/3 final -> <out> [to merge]",
    ]
    final = chain.stages[-1].plan
    totals = chain_totals(chain)
    # Only the final output is written; the streamed stages' inputs are read, theirs are not.
    assert totals["bytes_to_write"] == final.bytes_to_write
    assert totals["bytes_to_read"] == 4 * 6736 * 4
    # While the final stage runs, each streamed stage merges a tensor for it.
    peaks = [sp.plan.peak_memory_estimate for sp in chain.stages]
    assert totals["peak_memory"] == sum(peaks)


def test_an_unread_stage_is_written_with_a_note(tmp_path: Path, family: dict[str, Path]) -> None:
    from meldkit.multi import ChainOptions, plan_chain

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: side\nmerge_method: linear\nmodels: [{family['ft1']}, {family['ft2']}]\n"
        f"parameters: {{weight: 1}}\n---\n"
        f"merge_method: linear\nmodels: [{family['ft1']}]\nparameters: {{weight: 1}}\n"
    )
    chain = plan_chain(recipe, ChainOptions(tmp_path / "i", stream=True), tmp_path / "s")
    side = chain.stage("side")
    assert (side.streamed, side.note) == (False, "stage 'side' is written: no later stage reads it")


def test_out_may_not_hold_the_intermediates(
    tmp_path: Path, chain_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "merged"
    args = ["multi", str(chain_file), "--out", str(out), "-I", str(out / "stages"), "--overwrite"]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: output folder {out} contains the input model folder {out / 'stages' / 'ab'}"
    )
    assert not (out / "stages" / "ab").exists()
