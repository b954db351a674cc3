"""Peak RSS of the hidden-state router paths: transformers' whole model against layer by layer.

    python benchmarks/moe_hidden.py --base bench-data/med/base --experts 4 --prompts 4 --words 8

Each path runs in its own process (timed by ``benchmarks/run.py``'s ``timed``: wall time and
peak RSS from ``wait4``): ``floor`` imports torch and transformers and tokenizes the prompts
(what both paths pay before touching the model), ``transformers`` is
``prompt_hidden_states(..., layer_by_layer=False)`` (the whole base in float32 plus one batch),
``layerwise`` is ``layer_by_layer=True`` (one decoder layer at a time from the safetensors
files). The table gives each path's wall time and peak RSS, the RSS above the floor, the
layerwise/transformers ratios, and the largest difference between the two paths' router rows
(they must agree to float tolerance). ``--mode`` picks hidden or hidden_avg. ``--bfloat16``
adds a fourth process, the whole model loaded in bfloat16 as MergeKit runs it (the child
patches the dtype it is loaded with), and prints how far its rows are from the float32 ones.

The prompts are deterministic sentences of ``--words`` words (``--experts`` experts, each with
``--prompts`` positive and half as many negative prompts).

Measured 2026-12-02 on the shared 2-core machine under heavy load (load average ~12, so the wall
times are inflated and only their ratio means anything), with the command above plus
``--bfloat16``, on `med`'s base (Llama, 12 layers, hidden 1536, bfloat16, 790 MB; 24 prompts,
1267 tokens)::

    path            wall s  peak RSS MiB  above floor MiB
    floor            17.88           304                0
    transformers    137.34          2612             2309
    layerwise       146.70           504              200
    layerwise / transformers: wall 1.07, peak RSS 0.19, RSS above floor 0.09
    largest router difference between the paths: 0.00e+00
    bfloat16 whole model against float32: largest difference 2.38e-03, smallest cosine 0.999772

(An earlier run without ``--bfloat16``, load ~16: 2612 against 527 MiB, ratio 0.20.)
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import run as bench  # noqa: E402  (benchmarks/run.py, beside this script)

PATHS = ("floor", "transformers", "layerwise")
# With --bfloat16: the whole model in bfloat16, as MergeKit runs it (quality, not memory).
BF16 = "bfloat16"
_WORDS = (
    "the a model merges experts router layer token prompt code math story poem law data "
    "science history music travel food health sport game money weather city river"
).split()


def make_prompts(experts: int, prompts: int, words: int) -> tuple[list[list[str]], list[list[str]]]:
    """Deterministic positive and negative prompts per expert."""
    rng = random.Random(0)

    def sentence(e: int) -> str:
        return f"expert {e}: " + " ".join(rng.choice(_WORDS) for _ in range(words))

    positive = [[sentence(e) for _ in range(prompts)] for e in range(experts)]
    negative = [[sentence(e) for _ in range(prompts // 2)] for e in range(experts)]
    return positive, negative


def child(args: argparse.Namespace) -> None:
    """One measured path: write its router rows to ``--result``."""
    # benchmarks/ holds a profile.py, which would shadow the standard module transformers uses.
    here = Path(__file__).parent.resolve()
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    import torch

    positive, negative = make_prompts(args.experts, args.prompts, args.words)
    if args.child == "floor":
        from meldkit.moe.hidden_states import load_tokenizer, tokenize_prompts

        jobs = tokenize_prompts(load_tokenizer(args.base), positive, negative)
        print(f"{len(jobs)} prompts, {sum(len(ids) for _, ids in jobs)} tokens")
        return
    from meldkit.moe.hidden_states import prompt_hidden_states

    if args.child == BF16:
        import transformers

        load = transformers.AutoModelForCausalLM.from_pretrained
        transformers.AutoModelForCausalLM.from_pretrained = lambda *a, **k: load(
            *a, **{**k, "dtype": torch.bfloat16}
        )

    rows = prompt_hidden_states(
        args.base,
        positive,
        negative,
        args.mode,
        layer_by_layer=args.child == "layerwise",
        batch_size=args.batch_size,
    )
    torch.save(rows, args.result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="bench-data/med/base")
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4, help="positive prompts per expert")
    parser.add_argument("--words", type=int, default=8, help="words per prompt")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mode", choices=("hidden", "hidden_avg"), default="hidden")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--bfloat16",
        action="store_true",
        help="also run the whole model in bfloat16 (MergeKit's precision) and compare its rows",
    )
    parser.add_argument("--child", choices=(*PATHS, BF16), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import torch

    work = Path(tempfile.mkdtemp(prefix="moe_hidden_"))
    runs = {}
    for path in PATHS + ((BF16,) if args.bfloat16 else ()):
        argv = [sys.executable, __file__, "--child", path, "--result", str(work / f"{path}.pt")]
        for flag in ("base", "experts", "prompts", "words", "batch_size", "mode"):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
        run = bench.timed(path, argv, work / f"{path}.log", args.timeout)
        if run.returncode != 0:
            sys.exit(f"{path} failed (exit {run.returncode}); see {work / f'{path}.log'}")
        runs[path] = run
    floor = runs["floor"].rss_bytes
    mib = 1 << 20
    print(f"base {args.base}, {args.experts} experts x {args.prompts} prompts, mode {args.mode}")
    print(f"{(work / 'floor.log').read_text().strip()}")
    print(f"{'path':<13} {'wall s':>8} {'peak RSS MiB':>13} {'above floor MiB':>16}")
    for path, run in ((p, r) for p, r in runs.items() if p != BF16):
        print(
            f"{path:<13} {run.wall_s:>8.2f} {run.rss_bytes / mib:>13.0f} "
            f"{(run.rss_bytes - floor) / mib:>16.0f}"
        )
    whole, layered = runs["transformers"], runs["layerwise"]
    print(
        f"layerwise / transformers: wall {layered.wall_s / whole.wall_s:.2f}, peak RSS "
        f"{layered.rss_bytes / whole.rss_bytes:.2f}, RSS above floor "
        f"{(layered.rss_bytes - floor) / (whole.rss_bytes - floor):.2f}"
    )
    diff = (
        (
            torch.load(work / "layerwise.pt", weights_only=True)
            - torch.load(work / "transformers.pt", weights_only=True)
        )
        .abs()
        .max()
    )
    print(f"largest router difference between the paths: {float(diff):.2e}")
    if args.bfloat16:
        f32 = torch.load(work / "transformers.pt", weights_only=True)
        b16 = torch.load(work / f"{BF16}.pt", weights_only=True)
        cosine = (f32 * b16).sum(dim=-1)  # (layers, experts): both rows have norm 1
        print(
            f"bfloat16 whole model against float32: largest difference "
            f"{float((b16 - f32).abs().max()):.2e}, smallest cosine {float(cosine.min()):.6f}"
        )


if __name__ == "__main__":
    main()
