"""``meldkit demo``: build three tiny Llama-style models and merge them with a bundled recipe.

Needs no download: the models come from :mod:`meldkit.testing`. The recipe is a TIES merge
with a per-layer density gradient, so the demo exercises planning, parameter resolution,
the task-vector pipeline, sharded output and the model card.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["run_demo", "DEMO_RECIPE"]

DEMO_RECIPE = """\
# meldkit demo: TIES-merge two fine-tunes onto their base model.
merge_method: ties
base_model: {root}/models/base
models:
  - model: {root}/models/ft1
    parameters:
      weight: 0.6
      density: [0.9, 0.5]      # a gradient over the layers
  - model: {root}/models/ft2
    parameters:
      weight: 0.4
      density: 0.7
parameters:
  normalize: true
dtype: float32
out_dtype: bfloat16
"""


def run_demo(out: str | Path) -> Path:
    """Make the models under ``out/models``, write ``out/recipe.yaml``, merge into ``out/merged``."""
    from meldkit.api import run_merge
    from meldkit.plan.summary import describe_plan
    from meldkit.testing import make_model_family

    root = Path(out).resolve()
    if (root / "models").exists():
        shutil.rmtree(root / "models")
    root.mkdir(parents=True, exist_ok=True)
    make_model_family(
        root / "models", "llama", n=2, num_layers=4, hidden=64, intermediate=128, vocab=128
    )
    recipe = root / "recipe.yaml"
    recipe.write_text(DEMO_RECIPE.format(root=root.as_posix()), encoding="utf-8")
    print(f"made 3 tiny Llama models in {root / 'models'} and the recipe {recipe}")
    plan = run_merge(
        recipe,
        root / "merged",
        on_warning=lambda message: print(f"warning: {message}", file=sys.stderr),
        overwrite=True,
        quiet=True,
        out_shard_size=200_000,
    )
    print(describe_plan(plan))
    files = sorted(p.name for p in (root / "merged").iterdir())
    print(f"merged model written to {root / 'merged'}: {', '.join(files)}")
    print(f"next: meldkit verify {root / 'merged'}")
    return root / "merged"
