"""Consensus merging: TALL and consensus masks on a hand-worked example, over TA and TIES."""

from __future__ import annotations

import torch

from tests.methods.helpers import run_method, t

# Three task vectors (exact in float32), base 0:
#   v_1 = [ 1.0, 2.0, 0.0,  0.5]
#   v_2 = [ 1.0, 0.0, 0.0, -0.5]
#   v_3 = [-0.5, 0.0, 1.0,  0.5]
#   Σ   = [ 1.5, 2.0, 1.0,  0.5]
# mask_lambda 0.5: m_t = |v_t| >= 0.5 |Σ − v_t|
#   |Σ − v_1| = [0.5, 0, 1, 0]   -> 0.5·: [0.25, 0, 0.5, 0]   m_1 = [1, 1, 0, 1]
#   |Σ − v_2| = [0.5, 2, 1, 1]   -> 0.5·: [0.25, 1, 0.5, 0.5] m_2 = [1, 0, 0, 1]
#   |Σ − v_3| = [2, 2, 0, 0]     -> 0.5·: [1, 1, 0, 0]        m_3 = [0, 0, 1, 1]
#   votes = [2, 1, 1, 3]; k = 2 -> c = [1, 0, 0, 1]
V = [t(1.0, 2.0, 0.0, 0.5), t(1.0, 0.0, 0.0, -0.5), t(-0.5, 0.0, 1.0, 0.5)]
B = t(0.0, 0.0, 0.0, 0.0)
PER = {"mask_lambda": 0.5}


def test_consensus_over_task_arithmetic() -> None:
    out = run_method("consensus", [B, *V], 0, {"lambda": 0.5}, PER)
    assert torch.equal(out, t(0.75, 0.0, 0.0, 0.25))  # 0.5 · c ⊙ Σ
    # k = 1 keeps every entry some task marks (all four here): plain TA
    everything = run_method("consensus", [B, *V], 0, {"k": 1, "lambda": 0.5}, PER)
    assert torch.equal(everything, t(0.75, 1.0, 0.5, 0.25))
    # k = 3: only entry 3 has three votes
    assert torch.equal(run_method("consensus", [B, *V], 0, {"k": 3}, PER), t(0, 0, 0, 0.5))


def test_consensus_over_ties() -> None:
    # TIES, density 1, normalize: signs of Σ = [+, +, +, +];
    #   entry 0: agreeing v = 1, 1 -> 2 / 2 = 1;  entry 3: agreeing 0.5, 0.5 -> 1 / 2 = 0.5
    # c = [1, 0, 0, 1] -> [1, 0, 0, 0.5]
    out = run_method("consensus", [B, *V], 0, {"base_method": "ties"}, PER)
    assert torch.equal(out, t(1.0, 0.0, 0.0, 0.5))
    plain_ties = run_method("ties", [B, *V], 0, per_input={"weight": 1.0})
    assert torch.equal(plain_ties, t(1.0, 2.0, 1.0, 0.5))


def test_weights_scale_the_task_vectors_before_the_masks() -> None:
    # weight 2 on v_3: Σ = [1, 2, 2, 1]; |Σ − v_1| = [0, 0, 2, 0.5] -> m_1 = [1, 1, 0, 1]
    # |Σ − v_2| = [0, 2, 2, 1.5] -> m_2 = [1, 0, 0, 0];  |Σ − v_3·2| = [2, 2, 0, 0]: 0.5· ->
    # [1, 1, 0, 0] vs |2 v_3| = [1, 0, 2, 1] -> m_3 = [1, 0, 1, 1]; votes [3, 1, 1, 2]
    per = [{}, PER, PER, {"mask_lambda": 0.5, "weight": 2.0}]
    out = run_method("consensus", [B, *V], 0, {}, per)
    assert torch.equal(out, t(1.0, 0.0, 0.0, 1.0))


def test_consensus_refuses_an_unknown_base_method() -> None:
    from meldkit.methods import get_method

    check = get_method("consensus").check
    assert check is not None
    assert check({"base_method": "dare"}, [{}, {}], 0) == [
        "consensus: base_method is 'dare'; choose one of task_arithmetic, ties"
    ]
