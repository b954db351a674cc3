"""Multi-stage recipes: a YAML file of several merge documents, as ``mergekit-multi`` runs.

Each document is an ordinary merge recipe. A document's ``name:`` makes its output usable as a
model in later documents: wherever a recipe takes a model reference (``models:``,
``base_model:``, slices' ``sources``, ``modules:``, tokenizer sources, ``name+lora`` refs),
that name stands for the stage's output folder. Exactly one document has no name: the final
stage, written to the output folder. :func:`parse_stages` reads the documents and checks the
graph (unknown, duplicate or missing names, cycles), reporting every problem at once;
:func:`resolve_stage` rewrites a stage's references to concrete folders. Torch-free.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meldkit.errors import PlanError, RecipeError, did_you_mean

__all__ = ["Stage", "StageGraph", "parse_stages", "read_documents", "resolve_stage"]

GRAPH_HINT = (
    "give every stage but the last a unique `name:`, refer to a stage only by that name, "
    "and keep exactly one unnamed (final) stage"
)


@dataclass(frozen=True)
class Stage:
    """One document of a multi-stage recipe: its position, name (None for the final stage),
    the recipe as parsed from YAML (``name`` removed) and the stage names it refers to."""

    index: int
    name: str | None
    data: dict[str, Any]
    needs: tuple[str, ...]

    @property
    def label(self) -> str:
        """How messages name the stage: its name, or ``final`` for the unnamed one."""
        return self.name if self.name is not None else "final"


@dataclass(frozen=True)
class StageGraph:
    """The stages of a recipe in an order that runs each after the stages it needs."""

    stages: tuple[Stage, ...]
    source: str

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def by_name(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def consumers(self, name: str) -> list[Stage]:
        """The stages that read stage ``name``'s output."""
        return [s for s in self.stages if name in s.needs]


def read_documents(text: str, origin: str) -> list[Any]:
    """The non-empty YAML documents of ``text`` (a list of merges counts as its documents)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(
            f"{origin}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}",
            hint="check the indentation and the '---' between documents",
        ) from None
    if len(docs) == 1 and isinstance(docs[0], list):
        docs = [d for d in docs[0] if d is not None]
    return docs


# -- model references ------------------------------------------------------------------------

Rewrite = Callable[[Any], Any]


def _model_slots(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any] | list[Any], Any]]:
    """Every (container, key) of ``data`` that holds a model reference."""
    yield from _stack_slots(data)
    if "base_model" in data:
        yield data, "base_model"
    modules = data.get("modules")
    if isinstance(modules, dict):
        for module in modules.values():
            if isinstance(module, dict):
                yield from _stack_slots(module)
    if isinstance(data.get("tokenizer_source"), str):
        yield data, "tokenizer_source"
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict):
        if isinstance(tokenizer.get("source"), (str, dict)):
            yield tokenizer, "source"
        tokens = tokenizer.get("tokens")
        if isinstance(tokens, dict):
            for spec in tokens.values():
                src = spec.get("source") if isinstance(spec, dict) else None
                if isinstance(src, dict) and src.get("kind") == "model_token":
                    yield src, "model"
                elif isinstance(src, str):
                    yield spec, "source"


def _stack_slots(d: dict[str, Any]) -> Iterator[tuple[dict[str, Any] | list[Any], Any]]:
    models = d.get("models")
    if isinstance(models, list):
        for i, m in enumerate(models):
            if isinstance(m, dict) and "model" in m:
                yield m, "model"
            elif isinstance(m, str):
                yield models, i
    slices = d.get("slices")
    if isinstance(slices, list):
        for sl in slices:
            if not isinstance(sl, dict):
                continue
            if "base_model" in sl:
                yield sl, "base_model"
            sources = sl.get("sources")
            if isinstance(sources, list):
                for src in sources:
                    if isinstance(src, dict) and "model" in src:
                        yield src, "model"


def _referenced_name(value: Any, names: Mapping[str, Any]) -> tuple[str, Any] | None:
    """(stage name, LoRA or None) when ``value`` refers to a stage: ``name``, ``name+lora``,
    ``{model: name, lora: ...}`` or ``{path: name}``."""
    if isinstance(value, str):
        head, plus, lora = value.partition("+")
        if head.strip() in names:
            return head.strip(), (lora.strip() if plus else None)
        return None
    if isinstance(value, dict):
        inner = value.get("model", value)
        path = inner.get("path") if isinstance(inner, dict) else inner
        if isinstance(path, str) and path in names and not value.get("revision"):
            found = _referenced_name(path, names) if isinstance(inner, str) else (path, None)
            if found is not None:
                return found[0], value.get("lora", found[1])
    return None


def _references(data: dict[str, Any], names: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for container, key in _model_slots(data):
        hit = _referenced_name(container[key], names)
        if hit is not None and hit[0] not in found:
            found.append(hit[0])
    return found


def _rewritten(value: Any, folder: Path, lora: Any) -> Any:
    path = str(folder)
    if lora is None:
        return path
    # The dict form: a folder whose path holds '+' or '@' is still read literally.
    return {"model": path, "lora": lora}


def resolve_stage(stage: Stage, folders: Mapping[str, Path]) -> dict[str, Any]:
    """``stage``'s recipe with every reference to an earlier stage replaced by its folder."""
    data = copy.deepcopy(stage.data)
    for container, key in list(_model_slots(data)):
        value = container[key]
        hit = _referenced_name(value, folders)
        if hit is None:
            continue
        if container is data.get("tokenizer") or (isinstance(container, dict) and key == "source"):
            container[key] = str(folders[hit[0]])
            continue
        container[key] = _rewritten(value, folders[hit[0]], hit[1])
    return data


# -- the graph -------------------------------------------------------------------------------


def _unknown_names(stage: Stage, named: Mapping[str, int]) -> list[str]:
    """A reference that is no stage name, no local folder and no hub id (no '/'): most likely
    a misspelt stage name, reported now rather than as a missing folder mid-chain."""
    found: list[str] = []
    for container, key in _model_slots(stage.data):
        value = container[key]
        path = value.get("model", value) if isinstance(value, dict) else value
        path = path.get("path") if isinstance(path, dict) else path
        if not isinstance(path, str) or path in ("union", "base"):
            continue
        head = path.partition("+")[0].partition("@")[0].strip()
        if not head or head in named or "/" in head or os.path.exists(os.path.expanduser(head)):
            continue
        problem = (
            f"stage '{stage.label}': unknown stage name '{head}' (no stage has that name, no "
            f"folder '{head}' exists, and a hub id is written org/name).{did_you_mean(head, named)}"
        )
        if problem not in found:
            found.append(problem)
    return found


def _stage_name(doc: dict[str, Any], i: int, problems: list[str]) -> str | None:
    name = doc.get("name")
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        problems.append(f"document {i + 1}: name must be a non-empty string, got {name!r}")
        return None
    return name


def _order(stages: list[Stage], problems: list[str]) -> list[Stage]:
    """``stages`` with each after the stages it needs (file order where free); a cycle is a
    problem naming its stages in order."""
    done: list[Stage] = []
    state: dict[int, str] = {}
    by_name = {s.name: s for s in stages if s.name is not None}
    cycles: list[list[str]] = []

    def visit(s: Stage, path: list[str]) -> None:
        if state.get(s.index) == "done":
            return
        if state.get(s.index) == "active":
            cycle = path[path.index(s.label) :] + [s.label]
            if sorted(cycle[:-1]) not in [sorted(c[:-1]) for c in cycles]:
                cycles.append(cycle)
            return
        state[s.index] = "active"
        for need in s.needs:
            if need in by_name and need != s.name:  # a self-reference is reported apart
                visit(by_name[need], [*path, s.label])
        state[s.index] = "done"
        done.append(s)

    for s in stages:
        visit(s, [])
    for cycle in cycles:
        problems.append(f"the stages form a cycle: {' -> '.join(cycle)}")
    return done


def parse_stages(text: str, origin: str = "recipe") -> StageGraph:
    """Read a multi-stage recipe and order its stages; every graph problem (unknown names,
    duplicate names, cycles, a missing or second unnamed stage) is reported in one
    :class:`PlanError`. Each document's own schema is checked later, by the planner."""
    docs = read_documents(text, origin)
    problems: list[str] = []
    named: dict[str, int] = {}
    raw: list[tuple[int, str | None, dict[str, Any]]] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            problems.append(f"document {i + 1}: a stage must be a merge recipe (a mapping)")
            continue
        name = _stage_name(doc, i, problems)
        if name is not None and name in named:
            problems.append(
                f"document {i + 1}: stage name '{name}' is already used by document "
                f"{named[name] + 1}"
            )
        elif name is not None:
            named[name] = i
        raw.append((i, name, {k: v for k, v in doc.items() if k != "name"}))
    unnamed = [i for i, name, _ in raw if name is None and isinstance(docs[i], dict)]
    if not unnamed:
        problems.append("no final stage: every document has a name")
    for extra in unnamed[1:]:
        problems.append(
            f"document {extra + 1}: a second stage without a name (document {unnamed[0] + 1} "
            "is already the final stage)"
        )
    stages = [Stage(i, name, data, tuple(_references(data, named))) for i, name, data in raw]
    for s in stages:
        if s.name is not None and s.name in s.needs:
            problems.append(f"stage '{s.name}' uses its own output")
        problems.extend(_unknown_names(s, named))
    ordered = _order(stages, problems)
    ordered = [s for s in ordered if s.name is not None] + [s for s in ordered if s.name is None]
    if problems:
        raise PlanError(problems, hint=GRAPH_HINT)
    return StageGraph(tuple(ordered), origin)


def is_multi_stage(recipe: Any) -> bool:
    """Whether ``recipe`` names a file of several merge documents (or a YAML list of merges):
    a multi-stage recipe for ``meldkit multi``, which ``meldkit plan`` plans as a chain."""
    if not isinstance(recipe, (str, os.PathLike)):
        return False
    try:
        path = Path(recipe)
        if not path.is_file():
            return False
        docs = read_documents(path.read_text(encoding="utf-8"), str(recipe))
    except (OSError, UnicodeDecodeError, ValueError, RecipeError):
        return False
    except Exception:  # malformed YAML values: the single-recipe loader reports them
        return False
    merges = [d for d in docs if isinstance(d, dict) and "merge_method" in d]
    return len(docs) > 1 and bool(merges)
