"""Tokenizer transplant (``meldkit tokensurgeon``): give a model another model's tokenizer by
rebuilding its embedding and output rows, without training (behaviour spec §10).

:func:`transplant_tokenizer` is the whole operation; :class:`SurgeonOptions` its settings.
Modules: :mod:`.vocab` (normalised vocabularies), :mod:`.plan` (headers only),
:mod:`.assign` (which row each token gets), :mod:`.omp` and :mod:`.approximate` (the
approximations), :mod:`.rows` (rebuilding the tensors), :mod:`.report` (held-out quality),
:mod:`.run` (streaming output) and :mod:`.cli`. torch is imported only by the modules that
compute, so importing this package stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meldkit.tokensurgeon.options import APPROXIMATIONS, SurgeonOptions

if TYPE_CHECKING:
    from meldkit.tokensurgeon.run import TransplantResult, transplant_tokenizer

__all__ = ["APPROXIMATIONS", "SurgeonOptions", "TransplantResult", "transplant_tokenizer"]


def __getattr__(name: str) -> Any:
    if name in ("TransplantResult", "transplant_tokenizer"):
        from meldkit.tokensurgeon import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
