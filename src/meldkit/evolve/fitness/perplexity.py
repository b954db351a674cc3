"""Perplexity on a text file as a fitness: minus the mean token negative log-likelihood.

The file is tokenized once with the tokenizer passed in (its default special tokens, so a Llama
tokenizer puts BOS before the text) and cut to its first ``T = min(max_tokens, len)`` tokens
``t_0 .. t_{T-1}``. Windows of ``context`` tokens start every ``stride`` tokens: window k covers
``[s_k, e_k)`` with ``s_k = k * stride`` and ``e_k = min(s_k + context, T)``, the last window
being the first that reaches ``T``. Window k scores the tokens ``j`` in
``[max(s_k + 1, e_{k-1}), e_k)`` (``e_{-1} = 0``), each by the model's prediction from the tokens
``s_k .. j-1`` of its own window, so every token is scored once and sees at most ``context - 1``
tokens before it. With ``stride == context`` (the default) the windows do not overlap and the
first token of each is not scored. Over the set S of scored tokens::

    value = -(1 / |S|) * sum_{j in S} -ln p(t_j | t_{s_k} .. t_{j-1})      (higher is better)
    ppl   = exp(-value)

YAML::

    fitness:
      - perplexity: {file: data/wiki.txt, max_tokens: 4096, context: 512}
        weight: 0.1

Key ``"perplexity:<file name>"``, detail ``"<key>.ppl"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meldkit.errors import InputError, OptionError
from meldkit.evolve.fitness.base import as_mapping, check_keys, int_option

__all__ = ["PerplexityFitness", "windows"]


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, first_scored, end)`` of every window over ``n_tokens`` tokens (see the module)."""
    spans = []
    previous_end = 0
    start = 0
    while True:
        end = min(start + context, n_tokens)
        first = max(start + 1, previous_end)
        if first < end:
            spans.append((start, first, end))
        if end >= n_tokens:
            return spans
        previous_end = end
        start += stride


@dataclass
class PerplexityFitness:
    """Minus the mean token NLL (natural log) of the first ``max_tokens`` tokens of ``file``."""

    file: Path
    max_tokens: int = 4096
    context: int = 512
    stride: int = 512
    weight: float = 1.0
    name: str = ""
    needs_tokenizer: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"perplexity:{self.file.name}"
        self._tokenizer: Any = None
        self._ids: list[int] = []

    def __getstate__(self) -> dict[str, Any]:
        # The tokenizer cache stays behind when the term travels to a worker process.
        state = dict(self.__dict__)
        state["_tokenizer"], state["_ids"] = None, []
        return state

    def token_ids(self, tokenizer: Any) -> list[int]:
        """The file's first ``max_tokens`` token ids (kept while the same tokenizer is passed)."""
        if tokenizer is None:
            raise OptionError(
                f"{self.name} needs the tokenizer, got None",
                hint="load the merged model's tokenizer",
            )
        if tokenizer is not self._tokenizer:
            self._ids = _tokenize_prefix(self.file, tokenizer, self.max_tokens)
            self._tokenizer = tokenizer
            if len(self._ids) < 2:
                raise InputError(
                    f"{self.name}: {self.file} has {len(self._ids)} token(s); perplexity needs at least 2",
                    hint="use a longer text file",
                )
        return self._ids

    def score(self, model: Any, tokenizer: Any) -> dict[str, float]:
        """``{name: -mean NLL, name + ".ppl": exp(mean NLL)}``."""
        import torch

        ids = self.token_ids(tokenizer)
        device = next(model.parameters()).device
        tokens = torch.tensor(ids, dtype=torch.long, device=device)
        total, count = 0.0, 0
        with torch.no_grad():
            for start, first, end in windows(len(ids), self.context, self.stride):
                window = tokens[None, start:end]  # (1, end - start)
                logits = model(input_ids=window, use_cache=False).logits[0]  # (end - start, vocab)
                # Position p predicts token p + 1: the scored tokens first..end-1 are predicted by
                # the window's positions first-1..end-2.
                predicted = logits[first - 1 - start : end - 1 - start]  # (end - first, vocab)
                log_probs = predicted.float().log_softmax(-1)
                targets = tokens[first:end]
                total += float(-log_probs.gather(1, targets[:, None]).sum())
                count += end - first
        mean_nll = total / count
        return {self.name: -mean_nll, f"{self.name}.ppl": math.exp(mean_nll)}


def _tokenize_prefix(path: Path, tokenizer: Any, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` token ids of a text file, tokenizing only a prefix of big files."""
    # Tokens of a cut text are exact except near the cut; reading a margin past what is needed
    # keeps the cut away from the tokens kept, and doubling covers text with long tokens.
    chars = 8 * (max_tokens + 64)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read(chars)
            while True:
                ids: list[int] = list(tokenizer(text)["input_ids"])
                more = "" if len(ids) >= max_tokens + 64 else handle.read(len(text))
                if not more:
                    return ids[:max_tokens]
                text += more
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text ({exc.reason})", hint="give perplexity a UTF-8 text file"
        ) from exc


_OPTIONS = ("file", "max_tokens", "context", "stride")


def parse_perplexity(options: Any, weight: float, where: str, base_dir: Path) -> PerplexityFitness:
    """The term of a ``perplexity:`` entry."""
    opts = as_mapping(
        options, where, "{perplexity: {file: data/wiki.txt, max_tokens: 4096, context: 512}}"
    )
    check_keys(opts, _OPTIONS, where)
    if "file" not in opts or not isinstance(opts["file"], str) or not opts["file"]:
        raise OptionError(
            f"{where}: file must name a text file, got {opts.get('file')!r}",
            hint="for example file: data/wiki.txt",
        )
    path = (base_dir / opts["file"]).resolve()
    if not path.is_file():
        raise OptionError(
            f"{where}: file not found: {path}", hint=f"relative paths start at {base_dir}"
        )
    max_tokens = int_option(opts, "max_tokens", 4096, 2, None, where)
    context = int_option(opts, "context", 512, 2, None, where)
    stride = int_option(opts, "stride", context, 1, context, where)
    return PerplexityFitness(
        file=path, max_tokens=max_tokens, context=context, stride=stride, weight=weight
    )
