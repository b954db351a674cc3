"""``modules:`` recipes: which tensors of a multi-module model (VLM, encoder-decoder) belong
to which named module.

MergeKit names modules in per-architecture tables (``text_decoder``, ``vision_tower``,
``multi_modal_projector``, T5's ``encoder``/``decoder``/``shared``). meldkit infers them: a
tensor belongs to the module one of whose aliases is a component of its name; tensors no
alias claims belong to the text module (the language model), when the recipe has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["partition_modules", "TEXT_MODULES"]

_VISION = ("vision_tower", "vision_model", "visual", "vision_encoder", "vision")
_ALIASES: dict[str, tuple[str, ...]] = {
    "text_decoder": ("language_model", "text_model"),
    "language_model": ("language_model", "text_model"),
    "text_model": ("text_model", "language_model"),
    "vision_tower": _VISION,
    "vision_model": _VISION,
    "visual": _VISION,
    "multi_modal_projector": ("multi_modal_projector", "mm_projector", "merger", "connector"),
}
TEXT_MODULES = frozenset({"text_decoder", "language_model", "text_model"})


def _aliases(module: str) -> tuple[str, ...]:
    return _ALIASES.get(module, (module,))


def partition_modules(
    modules: Sequence[str], names: Iterable[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Split tensor ``names`` (file order kept) among ``modules``; returns (by module, unclaimed)."""
    out: dict[str, list[str]] = {m: [] for m in modules}
    text = next((m for m in modules if m in TEXT_MODULES), None)
    unclaimed: list[str] = []
    for name in names:
        parts = name.split(".")
        owner = None
        for part in parts:
            owner = next((m for m in modules if part in _aliases(m)), None)
            if owner is not None:
                break
        if owner is None and text is not None and not any(p in _VISION for p in parts):
            owner = text
        if owner is None:
            unclaimed.append(name)
        else:
            out[owner].append(name)
    return out, unclaimed
