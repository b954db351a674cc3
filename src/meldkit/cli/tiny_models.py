"""``meldkit make-test-models DIR``: a tiny base model and fine-tunes of it, to try recipes on.

The models come from :func:`meldkit.testing.make_model_family`: real architectures (config,
safetensors weights, tokenizer) with a few hundred kilobytes of deterministic weights, made
locally. They are written into a temporary folder inside ``DIR`` and renamed into place only
when all of them are complete, so an interrupted or failed run leaves ``DIR`` as it was, and
two runs into the same ``DIR`` cannot mix their models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meldkit.errors import MeldError, OutputError, did_you_mean, disk_full, is_disk_full
from meldkit.io.sizes import format_size

__all__ = ["TinyModelOptions", "TestModelsError", "make_test_models", "sample_recipe"]

# Accepted --dtype spellings and their element size (meldkit.testing reads the same names).
_DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "float32": 4, "fp32": 4}
# These are test models: a mistyped size (--hidden 40960) should not fill the disk.
_MAX_TOTAL_BYTES = 4_000_000_000
_TMP_PREFIX = ".meldkit-test-models-"


class TestModelsError(MeldError):
    """Test models cannot be made with these options (a size, the architecture, the dtype)."""

    __test__ = False  # not a pytest test class, whatever its name


@dataclass(frozen=True)
class TinyModelOptions:
    """What ``meldkit make-test-models`` makes: ``n`` fine-tunes of one tiny ``arch`` base."""

    arch: str = "llama"
    n: int = 2
    layers: int = 4
    hidden: int = 64
    intermediate: int | None = None  # default: 2 * hidden
    vocab: int = 128
    dtype: str = "bfloat16"
    seed: int = 0
    overwrite: bool = False


def _check_numbers(o: TinyModelOptions) -> None:
    for flag, value, low in (
        ("--n", o.n, 1),
        ("--layers", o.layers, 1),
        ("--hidden", o.hidden, 1),
        ("--intermediate", o.intermediate if o.intermediate is not None else 1, 1),
        ("--vocab", o.vocab, 3),
        ("--seed", o.seed, 0),
    ):
        if value < low:
            raise TestModelsError(
                f"{flag} {value} is too small (the smallest is {low})",
                hint=f"give {flag} {low} or more",
            )
    if o.dtype not in _DTYPE_BYTES:
        raise TestModelsError(
            f"unknown --dtype '{o.dtype}'.{did_you_mean(o.dtype, _DTYPE_BYTES)}",
            hint="use bfloat16, float16 or float32",
        )


def _model_bytes(o: TinyModelOptions) -> int:
    """Bytes of one model's weights, from the shapes the architecture gives these sizes."""
    from meldkit.testing import ARCHS, expected_tensor_shapes

    if o.arch not in ARCHS:
        raise TestModelsError(
            f"unknown --arch '{o.arch}'.{did_you_mean(o.arch, ARCHS)}",
            hint="choose one of " + ", ".join(sorted(ARCHS)),
        )
    try:
        shapes = expected_tensor_shapes(
            o.arch,
            num_layers=o.layers,
            hidden=o.hidden,
            intermediate=o.intermediate or 2 * o.hidden,
            vocab=o.vocab,
        )
    except ValueError as exc:  # e.g. a hidden size the attention heads do not divide
        raise TestModelsError(
            f"cannot make {o.arch} models of these sizes: {exc}",
            hint="--hidden must be a multiple of 4 (the tiny models have 4 attention heads)",
        ) from None
    numel = sum(_numel(shape) for shape in shapes.values())
    return numel * _DTYPE_BYTES[o.dtype]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _targets(root: Path, o: TinyModelOptions) -> list[str]:
    """The folder names to write, after checking that none is in the way."""
    names = ["base", *(f"ft{i}" for i in range(1, o.n + 1))]
    if root.exists() and not root.is_dir():
        raise OutputError(f"{root} is a file, not a folder", hint="choose a folder for DIR")
    for name in names:
        target = root / name
        if not target.exists() or (target.is_dir() and not any(target.iterdir())):
            continue
        if not o.overwrite:
            raise OutputError(
                f"{target} already exists and is not empty",
                hint="choose another DIR, or pass --overwrite to replace base/ and ft1/ ... there",
            )
        if not (target / "config.json").is_file():
            raise OutputError(
                f"{target} is not a model folder (it has no config.json), so --overwrite "
                "does not replace it",
                hint="choose another DIR, or move that folder away",
            )
    return names


def make_test_models(out: str | Path, options: TinyModelOptions | None = None) -> str:
    """Write ``out/base`` and ``out/ft1`` ... ``out/ftN``; returns the report to print:
    the folders written and a recipe to try on them."""
    o = options or TinyModelOptions()
    _check_numbers(o)
    per_model = _model_bytes(o)
    total = per_model * (o.n + 1)
    if total > _MAX_TOTAL_BYTES:
        raise TestModelsError(
            f"these sizes make {format_size(total)} of test models "
            f"(at most {format_size(_MAX_TOTAL_BYTES)})",
            hint="lower --layers, --hidden, --vocab or --n; test models are meant to be tiny",
        )
    root = Path(out).absolute()
    names = _targets(root, o)
    # The folders this run creates (root and missing parents, innermost first): a run that
    # fails removes them again, if they are still empty.
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    except OSError as exc:
        raise _write_error(root, exc) from None
    done = False
    try:
        _build(tmp, o)
        with _locked(root):
            _targets(root, o)  # again: another run may have written them meanwhile
            _publish(tmp, root, names, o.overwrite)
        done = True
    except OSError as exc:
        raise _write_error(root, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            _remove_if_empty(created)  # leave no trace of a run that wrote nothing
    return _report(root, names, o)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (another run wrote there): keep it and its parents


def _build(tmp: Path, o: TinyModelOptions) -> None:
    from meldkit.testing import make_model_family

    make_model_family(
        tmp,
        o.arch,
        n=o.n,
        num_layers=o.layers,
        hidden=o.hidden,
        intermediate=o.intermediate or 2 * o.hidden,
        vocab=o.vocab,
        dtype=o.dtype,
        seed=o.seed,
    )


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` itself (no lock file is left behind), so that two
    runs into the same folder publish one after the other, never interleaved."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no flock
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock: publish unlocked
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _publish(tmp: Path, root: Path, names: list[str], overwrite: bool) -> None:
    """Rename every finished folder into place; on any failure, undo what was done."""
    undo: list[tuple[Path, Path]] = []  # (from, to) renames that restore the previous state
    try:
        for name in names:
            target = root / name
            if overwrite and target.exists():
                aside = tmp / f"old-{name}"
                os.rename(target, aside)  # removed with tmp once all are in place
                undo.append((aside, target))
            os.rename(tmp / name, target)
            undo.append((target, tmp / name))
    except BaseException:
        for src, dst in reversed(undo):
            os.rename(src, dst)
        raise


def _write_error(root: Path, exc: OSError) -> MeldError:
    if is_disk_full(exc):
        return disk_full(root)
    return OutputError(
        f"cannot write the test models to {root}: {exc.strerror or exc}",
        hint="choose a folder you can write to",
    )


def sample_recipe(root: Path, names: list[str]) -> str:
    """A recipe for the models under ``root``: TIES with a density gradient, or SLERP with a
    ``t`` gradient when there is a single fine-tune."""
    paths = {name: _yaml_path(root / name) for name in names}
    if len(names) == 2:
        return (
            "merge_method: slerp\n"
            f"base_model: {paths['base']}\n"
            f"models:\n  - model: {paths['base']}\n  - model: {paths['ft1']}\n"
            "parameters:\n  t: [0.0, 0.5, 1.0]      # a gradient over the layers\n"
            "dtype: float32\n"
        )
    lines = ["merge_method: ties", f"base_model: {paths['base']}", "models:"]
    for i, name in enumerate(names[1:]):
        density = "[0.9, 0.5]      # a gradient over the layers" if i == 0 else "0.7"
        lines += [
            f"  - model: {paths[name]}",
            "    parameters:",
            f"      weight: {round(1 / (len(names) - 1), 3)}",
            f"      density: {density}",
        ]
    lines += ["parameters:", "  normalize: true", "dtype: float32"]
    return "\n".join(lines) + "\n"


def _yaml_path(path: Path) -> str:
    text = path.as_posix()
    # A plain YAML scalar unless the path has characters YAML would read otherwise.
    plain = all(c.isalnum() or c in "/._-~" for c in text)
    return text if plain else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _report(root: Path, names: list[str], o: TinyModelOptions) -> str:
    lines = [
        f"wrote a tiny {o.arch} base and {o.n} fine-tune{'s' if o.n != 1 else ''} "
        f"({o.layers} layers, hidden {o.hidden}, vocab {o.vocab}, {o.dtype}, seed {o.seed}) "
        f"to {root}:"
    ]
    for name in names:
        folder = root / name
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        lines.append(f"  {folder}  ({format_size(size)})")
    lines += ["", "a recipe to try (save it as recipe.yaml):", ""]
    lines += sample_recipe(root, names).splitlines()
    lines += ["", "then: meldkit plan recipe.yaml --params && meldkit merge recipe.yaml merged"]
    return "\n".join(lines) + "\n"
