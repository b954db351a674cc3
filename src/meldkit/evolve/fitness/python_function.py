"""A user's Python function as a fitness: ``function(model, tokenizer) -> float``.

The entry names an importable module or a file, then the function::

    fitness:
      - python: my_evals:score_math          # import my_evals (on sys.path)
      - python: evals/code.py:pass_at_1      # load that file (relative to the search file)
        weight: 0.5

The function returns a number (higher is better), or a dict of numbers whose ``"score"`` is the
value and whose other entries become details (``"python:evals/code.py:pass_at_1.<key>"``).
The function is imported once when the search file is read, so a typo shows before any merge,
and again in each worker process that scores with it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from meldkit.errors import OptionError, RecipeError, did_you_mean

__all__ = ["PythonFitness"]

_FORM_HINT = "write python: module:function or python: path/to/file.py:function"


@dataclass
class PythonFitness:
    """Scores with ``function(model, tokenizer)`` from ``module`` (a dotted name or a .py file)."""

    module: str  # a dotted module name, or the absolute path of a .py file
    function: str
    weight: float = 1.0
    name: str = ""
    where: str = "fitness: python"  # the entry's position, for errors at scoring time

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"python:{self.module}:{self.function}"
        self._callable: Callable[..., Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # A function loaded from a file lives in a module no other process can import by name:
        # a worker resolves it again from module and function.
        state = dict(self.__dict__)
        state["_callable"] = None
        return state

    def resolve(self) -> Callable[..., Any]:
        """The function, imported on first use (OptionError if it cannot be)."""
        if self._callable is None:
            self._callable = _load_function(self.module, self.function, self.where)
        return self._callable

    def score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """``{name: value}`` plus ``name.<key>`` for a dict's other numeric entries."""
        returned = self.resolve()(model, tokenizer)
        what = f"{self.where} {self.module}:{self.function}"
        hint = "return a number (higher is better) or a dict like {'score': 0.8, ...}"
        if isinstance(returned, Mapping):
            if "score" not in returned:
                keys = ", ".join(map(str, returned)) or "nothing"
                raise RecipeError(
                    f"{what} returned a dict without 'score' (it has {keys})", hint=hint
                )
            result = {self.name: _as_float(returned["score"], what, hint)}
            for key, value in returned.items():
                if key != "score":
                    result[f"{self.name}.{key}"] = _as_float(value, f"{what} ({key!r})", hint)
            return result
        return {self.name: _as_float(returned, what, hint)}


def _as_float(value: Any, what: str, hint: str) -> float:
    # numpy and torch scalars convert through float(); bools and strings are refused.
    if isinstance(value, (bool, str, bytes)):
        raise RecipeError(
            f"{what} returned {type(value).__name__} {value!r}, not a number", hint=hint
        )
    # NaN and infinities pass: a broken candidate may score so, and the search decides.
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RecipeError(
            f"{what} returned {type(value).__name__}, not a number", hint=hint
        ) from None


def _load_function(module: str, function: str, where: str) -> Callable[..., Any]:
    """Import ``module`` (dotted name or .py path) and return its callable ``function``."""
    loaded = _load_file(Path(module), where) if module.endswith(".py") else _import(module, where)
    found = getattr(loaded, function, None)
    if not callable(found):
        names = [n for n in dir(loaded) if not n.startswith("_") and callable(getattr(loaded, n))]
        what = "no function" if found is None else f"{type(found).__name__} (not callable)"
        raise OptionError(
            f"{where}: {module} has {what} {function!r}.{did_you_mean(function, names)}",
            hint=f"define def {function}(model, tokenizer) -> float in it",
        )
    return found  # type: ignore[no-any-return]


def _import(module: str, where: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as exc:  # a user's module may raise anything while it is imported
        raise OptionError(
            f"{where}: cannot import {module!r}: {type(exc).__name__}: {exc}",
            hint="put its folder on PYTHONPATH, or name the file: python: path/to/file.py:function",
        ) from exc


def _load_file(path: Path, where: str) -> ModuleType:
    # A name unique to the path, so two files both called score.py do not replace each other.
    name = f"_meldkit_fitness_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise OptionError(f"{where}: cannot load {path}", hint=_FORM_HINT)
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded
    try:
        spec.loader.exec_module(loaded)
    except Exception as exc:  # the file's own code failed
        del sys.modules[name]
        raise OptionError(
            f"{where}: {path} failed to load: {type(exc).__name__}: {exc}",
            hint="run python on that file to see the full error",
        ) from exc
    return loaded


def parse_python(spec: Any, weight: float, where: str, base_dir: Path) -> PythonFitness:
    """The term of a ``python:`` entry; imports the function now to report mistakes early."""
    if not isinstance(spec, str) or ":" not in spec:
        raise OptionError(f"{where}: must be 'module:function', got {spec!r}", hint=_FORM_HINT)
    module, _, function = spec.rpartition(":")
    if not module or not function.isidentifier():
        raise OptionError(f"{where}: must be 'module:function', got {spec!r}", hint=_FORM_HINT)
    if module.endswith(".py"):
        path = (base_dir / module).resolve()
        if not path.is_file():
            raise OptionError(
                f"{where}: file not found: {path}",
                hint=f"relative paths start at {base_dir}",
            )
        term = PythonFitness(
            module=str(path), function=function, weight=weight, name=f"python:{spec}", where=where
        )
    else:
        term = PythonFitness(
            module=module, function=function, weight=weight, name=f"python:{spec}", where=where
        )
    term.resolve()
    return term
