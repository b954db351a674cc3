"""Greedy decoding of TinyTasks prompts with a causal LM, in the benchmark's arithmetic.

TinyTasks' tokenizer is one id per symbol: 4 specials (``<pad>`` 0, ``<s>`` 1, ``</s>`` 2,
``<unk>`` 3), then ``a-z``, ``0-9`` and ``":=.+"`` from id 4 (44 ids). A prompt is ``<s>`` and
its text; the answer is what the model writes greedily up to ``'.'``. Prompts of one length form
one batch (no padding, no attention mask) and every step re-runs the whole sequence (no KV
cache), as the benchmark's ``eval.py`` does, so the verdicts are its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_NEW_TOKENS", "SYMBOLS", "greedy_answers", "judge_answers"]

MAX_NEW_TOKENS = 16
SYMBOLS = "abcdefghijklmnopqrstuvwxyz0123456789:=.+"  # ids 4.. in this order
_N_SPECIALS = 4
_BOS = 1
_ID_OF = {c: _N_SPECIALS + i for i, c in enumerate(SYMBOLS)}
_STOP_ID = _ID_OF["."]


def _decode(ids: Sequence[int]) -> str:
    # Specials decode to nothing and ids past the vocabulary to '?', as in the benchmark.
    return "".join(
        SYMBOLS[i - _N_SPECIALS] if i - _N_SPECIALS < len(SYMBOLS) else "?"
        for i in ids
        if i >= _N_SPECIALS
    )


def greedy_answers(
    model: Any, texts: Sequence[str], max_new: int = MAX_NEW_TOKENS
) -> list[str | None]:
    """Greedy continuation of ``<s>`` + each text up to the first ``'.'`` (not included).

    ``None`` where no ``'.'`` came within ``max_new`` tokens. Texts of one length form one batch,
    so no padding or attention mask is needed; every step re-runs the whole sequence (no KV
    cache), which at these lengths costs little and keeps the benchmark's arithmetic.
    Call it under ``torch.no_grad()``.
    """
    import torch

    device = next(model.parameters()).device
    answers: list[str | None] = [None] * len(texts)
    by_length: dict[int, list[int]] = {}
    for i, text in enumerate(texts):
        by_length.setdefault(len(text), []).append(i)
    for length in sorted(by_length):
        rows = by_length[length]
        ids = torch.tensor(
            [[_BOS] + [_ID_OF[c] for c in texts[i]] for i in rows], dtype=torch.long, device=device
        )
        stopped = torch.zeros(len(rows), dtype=torch.bool, device=device)
        steps = []
        for _ in range(max_new):
            # (rows, length + 1 + step, vocab)
            logits = model(input_ids=ids, use_cache=False).logits
            token = logits[:, -1, :].float().argmax(-1)  # (rows,)
            steps.append(token)
            stopped |= token == _STOP_ID
            if bool(stopped.all()):
                break
            ids = torch.cat([ids, token[:, None]], dim=1)
        generated = torch.stack(steps, dim=1).tolist()  # (rows, steps)
        for row, i in enumerate(rows):
            tokens = generated[row]
            if _STOP_ID in tokens:
                answers[i] = _decode(tokens[: tokens.index(_STOP_ID)])
    return answers


def judge_answers(
    model: Any, cases: Sequence[tuple[str, str]], max_new: int = MAX_NEW_TOKENS
) -> list[bool]:
    """Whether greedy decoding of each ``(text, answer)`` case gives exactly ``answer``.

    The same verdicts as comparing :func:`greedy_answers` with the answers, for less work: a row
    leaves its batch as soon as its verdict is known (it stopped, or it wrote a symbol the answer
    does not have there), so a weak merge costs a step or two per prompt instead of sixteen.
    Texts are batched by length across tasks. A row's logits do not depend on the other rows in
    its batch, so the verdicts stay the benchmark's (the tests check every fp32 model against
    ``eval.py``). Call it under ``torch.no_grad()``.
    """
    import torch

    device = next(model.parameters()).device
    correct = [False] * len(cases)
    by_length: dict[int, list[int]] = {}
    for i, (text, _) in enumerate(cases):
        by_length.setdefault(len(text), []).append(i)
    for length in sorted(by_length):
        alive = by_length[length]  # the case of each batch row
        ids = torch.tensor(
            [[_BOS] + [_ID_OF[c] for c in cases[i][0]] for i in alive],
            dtype=torch.long,
            device=device,
        )
        matched = [0] * len(alive)  # answer symbols written so far, per row
        for _ in range(max_new):
            # (rows, length + 1 + step, vocab)
            logits = model(input_ids=ids, use_cache=False).logits
            token = logits[:, -1, :].float().argmax(-1)  # (rows,)
            keep: list[int] = []
            for row, (i, t) in enumerate(zip(alive, token.tolist())):
                answer = cases[i][1]
                if t == _STOP_ID:
                    correct[i] = matched[row] == len(answer)
                    continue
                if t >= _N_SPECIALS:  # specials decode to nothing: they neither match nor miss
                    k, m = t - _N_SPECIALS, matched[row]
                    if m >= len(answer) or k >= len(SYMBOLS) or SYMBOLS[k] != answer[m]:
                        continue  # wrong already
                    matched[row] = m + 1
                keep.append(row)
            if not keep:
                break
            if len(keep) < len(alive):
                rows = torch.tensor(keep, dtype=torch.long, device=device)
                ids, token = ids[rows], token[rows]
                alive = [alive[r] for r in keep]
                matched = [matched[r] for r in keep]
            ids = torch.cat([ids, token[:, None]], dim=1)
    return correct
