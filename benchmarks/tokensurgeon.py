"""Tokenizer transplant timing: a 32k -> 50k vocabulary on CPU, against a plain byte copy.

Synthetic inputs, built here: MODEL is a Llama (hidden 1024, 4 layers, bf16) with a 32,000-token
byte-level BPE; DONOR a Llama (hidden 1024, 2 layers) with a 50,000-token byte-level BPE that
shares 28,000 of MODEL's words in another order, so 21,741 donor tokens are new. Both
tokenizers are built with ``tokenizers`` (whole words as tokens, no merges).

Rows, all in one process run:

* ``byte copy``: every MODEL tensor read and written through the same reader and sharded
  writer (the floor for any tool that writes a model);
* ``transplant -a mean`` / ``-a subword``: the whole command (plan, vocabularies, row
  assignment, approximation, streaming output, tokenizer files);
* ``omp kernel``: batched OMP (k = 64, all 28,000 shared tokens as the dictionary) on one
  sample of new tokens, once per ``--omp-candidates`` value (0: every atom searched every step,
  the exact baseline; M: each token's M most correlated atoms only), with the mean cosine
  similarity between each target and its sparse reconstruction, and the time extrapolated to
  all new tokens. OMP's cost is tokens x k x hidden x (dictionary, or M), which is what
  ``--device cuda`` is for.

Command (from the repository root)::

    PYTHONPATH=src python benchmarks/tokensurgeon.py --work /tmp/ts-bench --omp-sample 128

Result on the shared 2-core development machine, 2026-12-02 04:25 UTC (load average 9-12 from
other jobs the whole time, so absolute times are several times an idle machine's, and noisy;
a run with ``--omp-sample 64`` gave 59.4 / 31.2 / 16.9 s for the three OMP rows)::

    rows: {'exact': 28259, 'byte': 0, 'prefix': 0, 'approximated': 21741, 'junk': 0, 'unused': 0}
    step                                       seconds  x byte copy
    byte copy                                      1.2         1.00
    transplant -a mean                            13.6        11.23
    transplant -a subword                         23.6        19.52

    omp kernel                                 seconds  x first  cosine  all 21741
    omp k=64, all atoms, 128 tok                 109.7     1.00  0.7559     18626s
    omp k=64, 1024 candidates, 128 tok            67.6     0.62  0.7464     11488s
    omp k=64, 256 candidates, 128 tok             26.1     0.24  0.7251      4432s

Reading it: a transplant without OMP costs about 10-20 byte copies of the model. The
candidate prefilter (the default, 1024) makes OMP 1.6-2x faster here and 256 candidates about
4x, at a small loss of fit (these synthetic rows are random, with no sparse structure, the
hardest case for the prefilter). Within the candidates each step is a batched
matrix-vector product over (M, hidden) per token, bound by memory bandwidth, plus the
Gram-Schmidt orthogonalisation; even so, a full k = 64 transplant of this size stays hours on
this CPU, a GPU job (``--device cuda``) or a smaller ``-k`` / ``--omp-candidates``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from meldkit.io.index import open_index
from meldkit.io.reader import TensorReader
from meldkit.io.writer import ShardedWriter, plan_shards
from meldkit.testing import make_tiny_model
from meldkit.tokensurgeon import SurgeonOptions, transplant_tokenizer
from meldkit.tokensurgeon.omp import batched_omp

SPECIALS = ["<unk>", "<s>", "</s>"]


def _tokenizer(words: list[str], folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate([*SPECIALS, *alphabet, *words])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def build_inputs(work: Path, model_vocab: int, donor_vocab: int, shared: int) -> tuple[Path, Path]:
    model, donor = work / "model", work / "donor"
    base = len(SPECIALS) + 256
    model_words = [f"Ġw{i}" for i in range(model_vocab - base)]
    gen = torch.Generator().manual_seed(0)
    keep = [model_words[i] for i in torch.randperm(len(model_words), generator=gen)[:shared]]
    donor_words = keep + [f"Ġx{j}" for j in range(donor_vocab - base - shared)]
    donor_words = [donor_words[i] for i in torch.randperm(len(donor_words), generator=gen)]
    for folder, vocab, hidden, layers, words in (
        (model, model_vocab, 1024, 4, model_words),
        (donor, donor_vocab, 1024, 2, donor_words),
    ):
        if not (folder / "model.safetensors").exists():
            make_tiny_model(
                folder, "llama", num_layers=layers, hidden=hidden, intermediate=2816,
                heads=16, kv_heads=8, vocab=vocab, dtype="bfloat16", with_tokenizer=False,
            )  # fmt: skip
            _tokenizer(words, folder)
    return model, donor


def byte_copy(model: Path, out: Path) -> None:
    index = open_index(model)
    from meldkit.io.writer import OutputTensorSpec

    specs = [OutputTensorSpec(n, t.dtype, tuple(t.shape)) for n, t in index.tensors.items()]
    out.mkdir(parents=True)
    with TensorReader() as reader, ShardedWriter(out, plan_shards(specs, 5 << 30)) as writer:
        for name, info in index.tensors.items():
            writer.write(name, reader.read(info))


def _timed(label: str, fn: object, rows: list[tuple[str, float]]) -> None:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    rows.append((label, time.perf_counter() - start))
    print(f"{label}: {rows[-1][1]:.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/tokensurgeon-bench"))
    p.add_argument("--model-vocab", type=int, default=32000)
    p.add_argument("--donor-vocab", type=int, default=50000)
    p.add_argument("--shared", type=int, default=28000)
    p.add_argument(
        "--omp-sample", type=int, default=128, help="new tokens in the OMP kernel timing"
    )
    p.add_argument(
        "--omp-candidates",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[0, 1024, 256],
        help="comma-separated --omp-candidates values to time (0: all atoms, the baseline)",
    )
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model, donor = build_inputs(args.work, args.model_vocab, args.donor_vocab, args.shared)
    rows: list[tuple[str, float]] = []
    for name in ("copy", "mean", "subword"):
        shutil.rmtree(args.work / name, ignore_errors=True)
    _timed("byte copy", lambda: byte_copy(model, args.work / "copy"), rows)
    counts: dict[str, int] = {}
    for method in ("mean", "subword"):

        def run(method: str = method) -> None:
            r = transplant_tokenizer(
                model, donor, args.work / method, SurgeonOptions(approximation=method)
            )
            counts.update(r.counts["embed"])

        _timed(f"transplant -a {method}", run, rows)
    # OMP kernel on a sample of the new tokens, over the full shared dictionary.
    with TensorReader() as reader:
        d_embed = reader.read(open_index(donor).tensors["model.embed_tokens.weight"]).float()
    atoms = d_embed[: args.shared]  # any `shared` donor rows: the cost depends only on sizes
    sample = d_embed[-args.omp_sample :]
    omp_rows: list[tuple[str, float, float]] = []
    for m in args.omp_candidates:
        label = f"omp k=64, {'all atoms' if m == 0 else f'{m} candidates'}, {args.omp_sample} tok"
        start = time.perf_counter()
        idx, coeffs = batched_omp(atoms, sample, 64, candidates=m)
        omp_rows.append(
            (label, time.perf_counter() - start, _fit_cosine(atoms, sample, idx, coeffs))
        )
        print(f"{label}: {omp_rows[-1][1]:.1f} s", flush=True)
    base = rows[0][1]
    new = counts.get("approximated", 0)
    print(f"\nrows: {counts}")
    print(f"{'step':<40} {'seconds':>9} {'x byte copy':>12}")
    for label, seconds in rows:
        print(f"{label:<40} {seconds:>9.1f} {seconds / base:>12.2f}")
    exact = omp_rows[0][1]
    print(
        f"\n{'omp kernel':<40} {'seconds':>9} {'x first':>8} {'cosine':>7} {'all ' + str(new):>10}"
    )
    for label, seconds, cosine in omp_rows:
        total = seconds / args.omp_sample * new  # extrapolated to every new token
        print(f"{label:<40} {seconds:>9.1f} {seconds / exact:>8.2f} {cosine:>7.4f} {total:>9.0f}s")


def _fit_cosine(
    atoms: torch.Tensor, targets: torch.Tensor, idx: torch.Tensor, coeffs: torch.Tensor
) -> float:
    """Mean cosine similarity between each target and its OMP reconstruction."""
    fit = torch.einsum("bk,bkd->bd", coeffs, atoms[idx])  # (tokens, hidden)
    return float(torch.nn.functional.cosine_similarity(fit, targets, dim=1).mean())


if __name__ == "__main__":
    main()
