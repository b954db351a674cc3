"""Which MODEL row each donor token gets (behaviour spec §10.1, steps 3 and 4).

For every output row (a donor id): an exact normalised match copies MODEL's row; otherwise,
when enabled for the matrix, a byte match (a one-byte text token <-> ``<0xNN>``), then the
longest prefix match; otherwise the token is approximated. Rows with no donor token (holes,
padding) and, with the Magikarp filter, donor tokens under-trained in both models are zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from meldkit.tokensurgeon.options import SurgeonOptions
from meldkit.tokensurgeon.vocab import TokenKey, Vocabulary

__all__ = ["RowAssignment", "assign_rows", "magikarp_bad_ids", "shared_pairs"]

KINDS = ("exact", "byte", "prefix", "approximated", "junk", "unused")


@dataclass
class RowAssignment:
    """Per output row: the MODEL id it copies (-1: none) and how it was decided."""

    sources: list[int]
    kinds: list[str]
    counts: dict[str, int] = field(default_factory=dict)

    def ids(self, kind: str) -> list[int]:
        """Output rows of one kind, ascending."""
        return [i for i, k in enumerate(self.kinds) if k == kind]


def _byte_partner(key: TokenKey) -> TokenKey | None:
    if isinstance(key, tuple) and key[0] == "byte":
        return bytes([int(key[1])])
    if isinstance(key, bytes) and len(key) == 1:
        return ("byte", key[0])
    return None


def _usable_index(vocab: Vocabulary, rows: int, bad: set[int]) -> dict[TokenKey, int]:
    return {k: i for k, i in vocab.index().items() if i < rows and i not in bad}


def assign_rows(
    model: Vocabulary,
    model_rows: int,
    donor: Vocabulary,
    out_rows: int,
    options: SurgeonOptions,
    matrix: str,
    bad_model: set[int] = frozenset(),  # type: ignore[assignment]
    bad_donor: set[int] = frozenset(),  # type: ignore[assignment]
) -> RowAssignment:
    """Assign every output row of ``matrix`` ("embed" or "lm_head")."""
    index = _usable_index(model, model_rows, bad_model)
    byte_match = options.matches(options.byte_match, matrix)
    prefix_match = options.matches(options.prefix_match, matrix)
    sources, kinds = [-1] * out_rows, ["unused"] * out_rows
    for i in range(out_rows):
        key = donor.keys[i] if i < donor.size else None
        if key is None:
            continue
        found, kind = index.get(key), "exact"
        if found is None and i in bad_donor:
            kinds[i] = "junk"
            continue
        if found is None and byte_match and (partner := _byte_partner(key)) is not None:
            found, kind = index.get(partner), "byte"
        if found is None and prefix_match and isinstance(key, bytes):
            for end in range(len(key) - 1, 0, -1):
                if (found := index.get(key[:end])) is not None:
                    kind = "prefix"
                    break
        if found is None:
            kinds[i] = "approximated"
        else:
            sources[i], kinds[i] = found, kind
    counts = {k: kinds.count(k) for k in KINDS}
    return RowAssignment(sources, kinds, counts)


def shared_pairs(assignment: RowAssignment, bad_donor: set[int]) -> tuple[list[int], list[int]]:
    """The dictionary for approximation: (donor ids, MODEL ids) of exact matches, both well
    trained."""
    donor_ids = [i for i in assignment.ids("exact") if i not in bad_donor]
    return donor_ids, [assignment.sources[i] for i in donor_ids]


def _cosine_to_unused(matrix: torch.Tensor, unused: list[int]) -> torch.Tensor:
    m = matrix.float()
    centre = m[unused].mean(dim=0, keepdim=True)
    return torch.nn.functional.cosine_similarity(m, centre, dim=1)


def magikarp_bad_ids(vocab: Vocabulary, embed: torch.Tensor, head: torch.Tensor | None) -> set[int]:
    """Under-trained ids (arXiv 2405.05417, as MergeKit applies it): unused or reserved ids;
    with an untied output projection, embedding norms below the 1% quantile; and rows whose
    cosine similarity to the mean unused row exceeds max(0.5, the used rows' 99% quantile), in the
    embedding or the output projection."""
    rows = embed.shape[0]
    unused = sorted(i for i in vocab.unused_ids() if i < rows) + list(range(vocab.size, rows))
    bad = set(unused)
    if head is not None:
        norms = embed.float().norm(dim=1)
        low = torch.quantile(norms, 0.01)
        bad |= set(torch.nonzero(norms < low).flatten().tolist())
    if unused:
        for matrix in (embed, head):
            if matrix is None:
                continue
            cos = _cosine_to_unused(matrix, unused)
            used = torch.ones(rows, dtype=torch.bool)
            used[unused] = False
            # The quantile is over the used rows: with many unused ones it would sit at ~1.
            pool = cos[used.to(cos.device)] if bool(used.any()) else cos
            threshold = max(0.5, float(torch.quantile(pool, 0.99)))
            bad |= set(torch.nonzero(cos > threshold).flatten().tolist())
    return bad
