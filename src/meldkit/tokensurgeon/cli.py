"""``meldkit tokensurgeon MODEL DONOR OUT``: the command line of the tokenizer transplant.

Flag spellings are ``mergekit-tokensurgeon``'s (behaviour spec §1). Nothing heavy is imported
here: torch and tokenizers load only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meldkit.cli.options import add_debug
from meldkit.tokensurgeon.options import (
    APPROXIMATIONS,
    MATCH_TARGETS,
    REFUSED_APPROXIMATIONS,
    SUBWORD_METHODS,
    WEIGHT_SCHEMES,
)

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    """Add the ``tokensurgeon`` subcommand."""
    p = sub.add_parser(
        "tokensurgeon",
        help="give a model another model's tokenizer (rebuilds embedding rows, no training)",
        description="Give MODEL the DONOR's tokenizer: tokens both share keep MODEL's rows, "
        "the rest are approximated (default: orthogonal matching pursuit, arXiv 2506.06607). "
        "No remote code is ever run.",
    )
    p.add_argument("model", help="the model to change (folder or hub id)")
    p.add_argument("donor", help="the model whose tokenizer it gets (folder or hub id)")
    p.add_argument("out", help="output folder")
    g = p.add_argument_group("approximation")
    g.add_argument(
        "-a",
        "--approximation-method",
        default="omp",
        metavar="METHOD",
        help=f"{', '.join(APPROXIMATIONS)} (default omp); "
        f"{', '.join(REFUSED_APPROXIMATIONS)} are refused",
    )
    g.add_argument("-k", "--k", type=int, default=64, help="OMP atoms / neighbours (default 64)")
    g.add_argument(
        "--omp-candidates", type=int, default=1024, metavar="M",
        help="omp: search only each token's M most correlated shared tokens "
        "(default 1024; 0: all, exact but slow on large vocabularies)",
    )  # fmt: skip
    g.add_argument(
        "-c", "--cosine-similarity", dest="cosine", action="store_true", default=False,
        help="common_interpolation: nearest neighbours by cosine instead of Euclidean distance",
    )  # fmt: skip
    g.add_argument(
        "-nc", "--no-cosine-similarity", dest="cosine", action="store_false",
        help="common_interpolation: Euclidean distance (the default)",
    )  # fmt: skip
    g.add_argument(
        "-w", "--weight-scheme", default="distance_proportional", choices=WEIGHT_SCHEMES,
        help="common_interpolation: how neighbours are weighted (default distance_proportional)",
    )  # fmt: skip
    g.add_argument(
        "-s", "--subword-method", default="mean", choices=SUBWORD_METHODS,
        help="subword: how the pieces' rows are combined (default mean)",
    )  # fmt: skip
    g.add_argument("--batch-size", type=int, default=512, help="tokens solved together (-1: all)")
    g.add_argument(
        "-pm", "--prefix-match", default="no", choices=MATCH_TARGETS,
        help="rows of unmatched tokens from their longest matching prefix token: no, yes, embed "
        "or lm_head (the matrix it applies to)",
    )  # fmt: skip
    g.add_argument(
        "-bm", "--byte-match", default="no", choices=MATCH_TARGETS,
        help="match byte tokens to the byte they stand for (<0x41> and A): no, yes, embed or "
        "lm_head",
    )  # fmt: skip
    g.add_argument(
        "--magikarp", action=argparse.BooleanOptionalAction, default=False,
        help="treat under-trained tokens (arXiv 2405.05417) as missing",
    )  # fmt: skip
    g.add_argument(
        "-nvn", "--new-vocab-noise", type=float, default=None,
        help="add seeded Gaussian noise of this scale to approximated rows",
    )  # fmt: skip
    g.add_argument(
        "-nvs", "--new-vocab-scale", type=float, default=None,
        help="multiply approximated rows by this factor",
    )  # fmt: skip
    g.add_argument(
        "--seed", type=int, default=0, help="for randn, john_hewitt, noise and the report"
    )
    o = p.add_argument_group("execution and output")
    o.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    o.add_argument("--cuda", action="store_true", help="same as --device cuda")
    o.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    o.add_argument(
        "--evaluate", action="store_true",
        help="measure every method's held-out cosine similarity (table, and in tokensurgeon.json)",
    )  # fmt: skip
    o.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="JSON",
        help="also write the evaluation here (implies --evaluate)",
    )
    add_debug(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from meldkit.tokensurgeon.options import SurgeonOptions
    from meldkit.tokensurgeon.report import format_report
    from meldkit.tokensurgeon.run import transplant_tokenizer

    options = SurgeonOptions(
        approximation=args.approximation_method,
        k=args.k,
        omp_candidates=args.omp_candidates,
        cosine_similarity=args.cosine,
        weight_scheme=args.weight_scheme,
        subword_method=args.subword_method,
        batch_size=args.batch_size,
        prefix_match=args.prefix_match,
        byte_match=args.byte_match,
        magikarp=args.magikarp,
        new_vocab_noise=args.new_vocab_noise,
        new_vocab_scale=args.new_vocab_scale,
        seed=args.seed,
        device="cuda" if args.cuda else args.device,
    )
    evaluate = args.evaluate or args.report is not None
    result = transplant_tokenizer(
        args.model, args.donor, args.out, options, evaluate=evaluate, overwrite=args.overwrite
    )
    for matrix, c in result.counts.items():
        print(
            f"{matrix}: {c['exact']} copied, {c['byte'] + c['prefix']} matched, "
            f"{c['approximated']} approximated, {c['junk'] + c['unused']} zeroed"
        )
    if result.evaluation is not None:
        print(format_report(result.evaluation))
        if args.report is not None:
            args.report.write_text(json.dumps(result.evaluation, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {result.out} in {result.seconds:.1f} s", file=sys.stderr)
    return 0
