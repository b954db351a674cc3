"""The settings of a tokenizer transplant, checked before anything is read.

Names and spellings follow ``mergekit-tokensurgeon`` (behaviour spec §1 and §10). What MergeKit
gets wrong is fixed or refused here, never passed on:

* ``--prefix-match`` / ``--byte-match`` ``embed`` and ``lm_head`` mean what they say (MergeKit
  swaps them);
* ``john_hewitt`` works (MergeKit's fallback for a non-positive-definite covariance crashes);
* ``stb`` (broken in MergeKit: its options object is passed as ``k``), ``landmark_pca`` and
  ``mp_rope`` are refused with a message naming the methods meldkit has.
"""

from __future__ import annotations

from dataclasses import dataclass

from meldkit.errors import RecipeError, did_you_mean

__all__ = [
    "APPROXIMATIONS",
    "REFUSED_APPROXIMATIONS",
    "WEIGHT_SCHEMES",
    "SUBWORD_METHODS",
    "MATCH_TARGETS",
    "SurgeonOptions",
]

APPROXIMATIONS = (
    "omp",
    "common_interpolation",
    "subword",
    "mean",
    "zero",
    "randn",
    "john_hewitt",
)
REFUSED_APPROXIMATIONS = {
    "stb": "MergeKit's stb is broken (it passes its options object where k is expected), "
    "so there is no reference behaviour to reproduce",
    "landmark_pca": "landmark_pca is not implemented in meldkit",
    "mp_rope": "mp_rope is not implemented in meldkit",
}
WEIGHT_SCHEMES = ("distance_proportional", "barycentric", "least_squares")
SUBWORD_METHODS = ("mean", "sum", "weighted_mean", "first_last")
MATCH_TARGETS = ("no", "yes", "embed", "lm_head")


@dataclass(frozen=True)
class SurgeonOptions:
    """How donor tokens get their rows (see :func:`meldkit.tokensurgeon.transplant_tokenizer`).

    ``k``: atoms for ``omp`` / neighbours for ``common_interpolation``. ``omp_candidates``:
    ``omp`` searches, per token, only the that many shared tokens most correlated with it (a
    documented approximation, many times faster on large vocabularies; 0: every shared token).
    ``batch_size``: target tokens solved together (-1: all at once). ``prefix_match`` / ``byte_match``: which matrices
    the optional matching applies to. ``magikarp``: treat under-trained tokens as missing.
    ``new_vocab_noise`` / ``new_vocab_scale``: Gaussian noise std added to, and a factor
    applied to, approximated rows. ``seed`` drives ``randn``, ``john_hewitt``, the noise and the
    held-out sample of the quality report. ``device``: "cpu", "cuda", "cuda:N" or "auto".
    """

    approximation: str = "omp"
    k: int = 64
    omp_candidates: int = 1024
    cosine_similarity: bool = False
    weight_scheme: str = "distance_proportional"
    subword_method: str = "mean"
    batch_size: int = 512
    prefix_match: str = "no"
    byte_match: str = "no"
    magikarp: bool = False
    new_vocab_noise: float | None = None
    new_vocab_scale: float | None = None
    seed: int = 0
    device: str = "cpu"

    def check(self) -> None:
        """Raise :class:`RecipeError` for the first bad setting."""
        method = self.approximation
        if method in REFUSED_APPROXIMATIONS:
            raise RecipeError(
                f"approximation method '{method}' is not supported: "
                + REFUSED_APPROXIMATIONS[method],
                hint="use one of: " + ", ".join(APPROXIMATIONS),
            )
        _choice("approximation method", method, APPROXIMATIONS)
        _choice("weight scheme", self.weight_scheme, WEIGHT_SCHEMES)
        _choice("subword method", self.subword_method, SUBWORD_METHODS)
        _choice("prefix match", self.prefix_match, MATCH_TARGETS)
        _choice("byte match", self.byte_match, MATCH_TARGETS)
        if not isinstance(self.k, int) or self.k < 1:
            raise RecipeError(f"k must be a positive integer, got {self.k!r}")
        if not isinstance(self.omp_candidates, int) or self.omp_candidates < 0:
            raise RecipeError(
                f"omp candidates must be a non-negative integer, got {self.omp_candidates!r}",
                hint="0 searches every shared token",
            )
        if self.batch_size != -1 and self.batch_size < 1:
            raise RecipeError(
                f"batch size must be a positive integer or -1, got {self.batch_size!r}",
                hint="-1 solves every token in one batch",
            )
        if self.new_vocab_noise is not None and self.new_vocab_noise < 0:
            raise RecipeError(f"new vocab noise must be >= 0, got {self.new_vocab_noise!r}")

    def matches(self, setting: str, matrix: str) -> bool:
        """Whether a ``--prefix-match``/``--byte-match`` value covers ``matrix`` ("embed" or
        "lm_head")."""
        return setting == "yes" or setting == matrix


def _choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise RecipeError(
            f"unknown {what} '{value}'.{did_you_mean(value, choices)}",
            hint="use one of: " + ", ".join(choices),
        )
