"""Raw checkpoints and in-memory state dicts (``meldkit merge-raw``, ``merge_state_dicts``).

A *raw* input is a flat ``{name: tensor}`` dict with no config.json: a single
``.safetensors`` file, a ``.pt``/``.bin`` state dict (read with ``torch.load(weights_only=
True, mmap=True)``), or a dict of tensors in memory. Recipes over raw inputs use the planner's
tensor builder and the engine's per-tensor math; see :mod:`meldkit.raw.planning` for what a
raw merge plans, :mod:`meldkit.raw.run` for ``merge_raw`` and :mod:`meldkit.raw.state_dicts`
for the in-memory merges behind :func:`meldkit.api.merge_state_dicts`.
"""
