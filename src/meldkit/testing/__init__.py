"""Tiny, deterministic Hugging Face checkpoints for tests, demos and plugin authors.

Everything here writes folders that look exactly like what ``transformers``' ``save_pretrained``
produces for a given architecture (same ``config.json`` keys, same tensor names and shapes, same
shard/index layout), but with a handful of kilobytes of deterministic random weights, so merge
code can be exercised end to end in milliseconds.

The package deliberately imports only ``torch``, ``safetensors`` and the standard library: it
must work in environments without ``transformers``/``tokenizers`` (meldkit's core does not depend
on them), and it must not pay their import time in every test.

Public API:

* :func:`make_tiny_model` -- one model folder (or a "fine-tune" of an existing one).
* :func:`make_model_family` -- a base plus ``n`` fine-tunes of it.
* :func:`make_header_only_model` -- a 70B-shaped sharded checkpoint that costs no disk or RAM.
* :func:`write_tiny_tokenizer` -- a hand-written BPE ``tokenizer.json`` + config files.
* :func:`read_model` -- load every tensor of a folder (safetensors or ``.bin``).
* :func:`expected_tensor_shapes` -- the ``{name: shape}`` an architecture would have.
* :data:`ARCHS` -- the architecture registry (:class:`ArchSpec` entries).

The layouts mirror the transformers release named by :data:`TRANSFORMERS_LAYOUT_VERSION`.
Notable v5 behaviour reproduced here: configs carry ``dtype`` (not ``torch_dtype``) and
``rope_parameters``; sharded indexes carry ``total_parameters`` next to ``total_size``;
Mixtral's in-memory modules are fused (``mlp.experts.gate_up_proj``) but ``save_pretrained``
reverts them to the per-expert ``block_sparse_moe.experts.N.w1/w2/w3`` layout by default, and
GPT-NeoX's ``lm_head`` is saved as ``embed_out``.

Modules: :mod:`~meldkit.testing.specs` (the dataclasses an architecture is described in),
:mod:`~meldkit.testing.blocks` and :mod:`~meldkit.testing.architectures` (the table),
:mod:`~meldkit.testing.values` (seeded tensor values), :mod:`~meldkit.testing.checkpoint_files`
(weights, shards, index, reading), :mod:`~meldkit.testing.tiny_tokenizer`,
:mod:`~meldkit.testing.models`, :mod:`~meldkit.testing.finetunes` and
:mod:`~meldkit.testing.header_only` (the factories).
"""

from __future__ import annotations

from meldkit.testing.architectures import ARCHS, TRANSFORMERS_LAYOUT_VERSION
from meldkit.testing.checkpoint_files import read_model
from meldkit.testing.header_only import make_header_only_model
from meldkit.testing.models import expected_tensor_shapes, make_model_family, make_tiny_model
from meldkit.testing.specs import ArchSpec, ModelDims, TensorSpec
from meldkit.testing.tiny_tokenizer import write_tiny_tokenizer

__all__ = [
    "ARCHS",
    "ArchSpec",
    "ModelDims",
    "TensorSpec",
    "TRANSFORMERS_LAYOUT_VERSION",
    "expected_tensor_shapes",
    "make_header_only_model",
    "make_model_family",
    "make_tiny_model",
    "read_model",
    "write_tiny_tokenizer",
]
