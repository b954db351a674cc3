"""Chat templates: ``chat_template: auto | <built-in name> | <Jinja string>``.

* ``auto`` picks the template used by most input models (a multi-template model counts with its
  ``default`` entry). Ties go to the model listed first, so the choice never depends on hash
  seeds.
* A short name (no newline, no ``{``, under 256 characters) names a bundled template:
  ``alpaca``, ``chatml``, ``exaone``, ``llama3``, ``mistral``.
* Anything else is a literal Jinja template; it must contain ``{`` and be at least 20
  characters long, otherwise it is almost certainly a typo of a built-in name.

Templates are read the way transformers reads them: ``chat_template.jinja`` wins over the
``chat_template`` key of ``tokenizer_config.json``; ``chat_template.json`` (processors) is the
last resort.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from meldkit.errors import RecipeError, did_you_mean

__all__ = [
    "BUILTIN_TEMPLATES",
    "builtin_template",
    "read_chat_template",
    "resolve_chat_template",
]

log = logging.getLogger(__name__)

BUILTIN_TEMPLATES: tuple[str, ...] = ("alpaca", "chatml", "exaone", "llama3", "mistral")
_MAX_NAME_LENGTH = 256  # longer strings are never treated as names (MergeKit's rule)
_MIN_TEMPLATE_LENGTH = 20


def builtin_template(name: str) -> str:
    """The text of the bundled template ``name`` (one of :data:`BUILTIN_TEMPLATES`)."""
    if name not in BUILTIN_TEMPLATES:
        raise RecipeError(
            f"unknown built-in chat template '{name}'.{did_you_mean(name, BUILTIN_TEMPLATES)}",
            hint="built-in templates: " + ", ".join(BUILTIN_TEMPLATES),
        )
    ref = resources.files("meldkit").joinpath("data", "chat_templates", f"{name}.jinja")
    return ref.read_text(encoding="utf-8")


def _template_from_value(value: Any) -> str | None:
    """A template from a config value: a string, a ``{name: template}`` dict or the list form
    ``[{"name": ..., "template": ...}]``; multi-template values give their ``default`` entry."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        value = {item.get("name"): item.get("template") for item in value if isinstance(item, dict)}
    if isinstance(value, dict):
        default = value.get("default")
        return default if isinstance(default, str) else None
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


def read_chat_template(folder: Path) -> str | None:
    """The chat template a model folder declares, or None.

    Order of precedence follows transformers: ``chat_template.jinja`` first, then
    ``tokenizer_config.json``'s ``chat_template``, then ``chat_template.json``.
    """
    folder = Path(folder)
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        data = _read_json(config)
        if isinstance(data, dict) and data.get("chat_template") is not None:
            template = _template_from_value(data["chat_template"])
            if template is not None:
                return template
    processor = folder / "chat_template.json"
    if processor.is_file():
        data = _read_json(processor)
        if isinstance(data, dict):
            return _template_from_value(data.get("chat_template"))
    return None


def _most_common(templates: Sequence[str]) -> str:
    counts = Counter(templates)
    best = max(counts.values())
    # First in model order among the most common: deterministic, unlike a set or dict of counts
    # built from a set of models.
    return next(t for t in templates if counts[t] == best)


def resolve_chat_template(spec: str | None, donor_folders: Sequence[Path]) -> str | None:
    """Turn the recipe's ``chat_template`` value into template text (None: keep the donor's).

    ``donor_folders`` are the input models' folders in recipe order (base first); only ``auto``
    reads them. Raises :class:`RecipeError` for an unknown name or a too-short template.
    """
    if spec is None:
        return None
    if spec == "auto":
        found = [t for t in (read_chat_template(Path(f)) for f in donor_folders) if t]
        if not found:
            log.warning("chat_template: auto found no chat template in any input model")
            return None
        return _most_common(found)
    looks_like_name = len(spec) < _MAX_NAME_LENGTH and "\n" not in spec and "{" not in spec
    if looks_like_name and spec in BUILTIN_TEMPLATES:
        return builtin_template(spec)
    if "{" not in spec or len(spec) < _MIN_TEMPLATE_LENGTH:
        raise RecipeError(
            f"invalid chat template '{spec[:60]}'.{did_you_mean(spec, BUILTIN_TEMPLATES)}",
            hint="use 'auto', a built-in name ("
            + ", ".join(BUILTIN_TEMPLATES)
            + ") or a Jinja template string",
        )
    return spec
