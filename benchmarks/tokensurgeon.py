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
* ``omp kernel``: batched OMP (k = 64, all 28,000 shared tokens as the dictionary) on a sample
  of new tokens, per token, and extrapolated to all of them. A full CPU run would take the
  extrapolated time; OMP's cost is tokens x dictionary x hidden x k, which is what
  ``--device cuda`` is for.

Command (from the repository root)::

    PYTHONPATH=src python benchmarks/tokensurgeon.py --work /tmp/ts-bench

Result on the shared 2-core development machine, 2026-12-02 (load average 12-16 from other
jobs the whole time, so absolute times are several times an idle machine's, and noisy; earlier
runs of the same command gave 12-21 s for ``mean`` and 20-59 s for ``subword``)::

    rows: {'exact': 28259, 'byte': 0, 'prefix': 0, 'approximated': 21741, 'junk': 0, 'unused': 0}
    step                                 seconds  x byte copy
    byte copy                                0.9         1.00
    transplant -a mean                      11.9        12.80
    transplant -a subword                   20.3        21.77
    omp kernel, k=64, 64 tokens             54.1        58.07
    omp k=64, all 21741 new (extrapolated)     18390      19728.0

Reading it: a transplant without OMP costs about 12-20 byte copies of the model (reading and
normalising two 32k/50k vocabularies, four float32 matrices, the assignment, the output); OMP
is matrix-product bound (64 x 64 x 28,259 x 1024 x 2 = 2.4e11 flops for the 64-token sample,
about 4 GFLOP/s on this loaded machine), so a full k = 64 transplant of this size is a GPU job
(``--device cuda``) or a smaller ``-k`` on the CPU.
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
    _timed(
        f"omp kernel, k=64, {args.omp_sample} tokens", lambda: batched_omp(atoms, sample, 64), rows
    )
    base = rows[0][1]
    new = counts.get("approximated", 0)
    per_token = rows[-1][1] / args.omp_sample
    print(f"\nrows: {counts}")
    print(f"{'step':<34} {'seconds':>9} {'x byte copy':>12}")
    for label, seconds in rows:
        print(f"{label:<34} {seconds:>9.1f} {seconds / base:>12.2f}")
    total = per_token * new
    print(
        f"{'omp k=64, all ' + str(new) + ' new (extrapolated)':<34} {total:>9.0f} {total / base:>12.1f}"
    )


if __name__ == "__main__":
    main()
