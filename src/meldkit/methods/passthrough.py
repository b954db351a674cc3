"""Passthrough: copies its single input, multiplied by ``scale`` when one is given.

```yaml
merge_method: passthrough
slices:
  - sources: [{model: ./a, layer_range: [0, 16]}]
  - sources: [{model: ./b, layer_range: [8, 24], parameters: {scale: 0.7}}]
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from meldkit.methods.registry import MergeContext


def passthrough(
    inputs: Sequence[torch.Tensor],
    base_index: int | None,
    shared: Mapping[str, Any],
    per_input: Sequence[Mapping[str, Any]],
    ctx: MergeContext,
) -> torch.Tensor:
    scale = per_input[0].get("scale")
    if scale is None:
        return inputs[0]
    return inputs[0] * float(scale)
