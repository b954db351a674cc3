"""The genome: gene layout, starting point, decoding into recipes, and its errors."""

from __future__ import annotations

import pytest

from meldkit.errors import RecipeError
from meldkit.evolve.config import parse_search_config
from meldkit.evolve.genome import Genome

MODELS = ["/m/ft_a", "/m/ft_b", "/m/ft_c", "/m/ft_d"]


def genome(num_layers: int = 4, **keys: object) -> Genome:
    data = {"models": MODELS, "base_model": "/m/base", "merge_method": "ties", **keys}
    config = parse_search_config(
        {"genome": data, "fitness": [{"python": "m:f"}]}, base_dir=__import__("pathlib").Path("/")
    )
    return Genome(config.genome, num_layers)


def test_layout_follows_mergekit_groups_models_filters_params() -> None:
    g = genome(layer_granularity=2, filters=["mlp"])
    # 2 groups x 4 models x (1 filter + the rest) x (weight, density)
    assert g.size == 32
    assert g.labels()[:5] == [
        "weight[g0,ft_a,mlp]",
        "density[g0,ft_a,mlp]",
        "weight[g0,ft_a]",
        "density[g0,ft_a]",
        "weight[g0,ft_b,mlp]",
    ]
    assert g.labels()[16] == "weight[g1,ft_a,mlp]"


def test_initial_point_is_mergekits_weight_one_over_n_and_one_elsewhere() -> None:
    g = genome()
    assert g.initial() == [0.25, 1.0] * 4
    # bounds [0, 2]: weight 1/4 sits at 0.125 of the way
    g2 = genome(search={"weight": [0.0, 2.0], "density": {"min": 0.5, "max": 1.0, "init": 0.75}})
    assert g2.initial() == [0.125, 0.5] * 4


def test_discrete_groups_decode_to_one_gradient_value_per_layer() -> None:
    g = genome(layer_granularity=2, search={"weight": [0.0, 2.0]})
    assert g.size == 8  # 2 groups x 4 models
    genes = [0.5, 0.25, 0.0, 1.0, 0.1, 0.2, 0.3, 0.4]
    recipe = g.recipe(genes)
    assert recipe["merge_method"] == "ties"
    assert recipe["base_model"] == "/m/base"
    assert recipe["parameters"] == {"normalize": True}  # MergeKit's evolve default for ties
    weights = [m["parameters"]["weight"] for m in recipe["models"]]
    assert weights[0] == [1.0, 1.0, pytest.approx(0.2), pytest.approx(0.2)]
    assert weights[3] == [2.0, 2.0, pytest.approx(0.8), pytest.approx(0.8)]


def test_smooth_groups_decode_to_one_gradient_point_per_group() -> None:
    g = genome(num_layers=6, layer_granularity=2, smooth=True, search={"weight": [0.0, 1.0]})
    recipe = g.recipe([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.0, 0.5])
    assert recipe["models"][0]["parameters"]["weight"] == [0.1, 0.5, 0.9]


def test_filters_become_conditional_lists_with_a_last_catch_all() -> None:
    g = genome(filters=["self_attn", "mlp"], search={"weight": [0.0, 1.0]})
    recipe = g.recipe([0.1, 0.2, 0.3] + [0.0] * 9)
    assert recipe["models"][0]["parameters"]["weight"] == [
        {"filter": "self_attn", "value": 0.1},
        {"filter": "mlp", "value": 0.2},
        {"value": 0.3},
    ]


def test_shared_parameters_go_to_the_top_level_next_to_the_fixed_ones() -> None:
    data = {
        "models": MODELS[:2],
        "base_model": "/m/base",
        "merge_method": "tsv",
        "search": {"alpha": [0.5, 2.0]},
        "parameters": {"embeddings": "mean"},
    }
    config = parse_search_config(
        {"genome": data, "fitness": [{"python": "m:f"}]}, base_dir=__import__("pathlib").Path("/")
    )
    g = Genome(config.genome, 4)
    assert g.labels() == ["alpha[g0]"]
    recipe = g.recipe([0.5])
    assert recipe["parameters"] == {"embeddings": "mean", "alpha": 1.25}
    assert recipe["models"] == [{"model": "/m/ft_a"}, {"model": "/m/ft_b"}]


def test_a_base_listed_among_the_models_gets_no_gene_of_its_own() -> None:
    g = genome(models=["/m/base", *MODELS[:2]], search={"weight": [0.0, 1.0]})
    assert g.labels() == ["weight[g0,ft_a]", "weight[g0,ft_b]"]
    assert g.recipe([0.5, 0.5])["models"][0] == {"model": "/m/base"}


def test_negative_weights_widen_the_default_bounds() -> None:
    g = genome(search=None, allow_negative_weights=True, merge_method="task_arithmetic")
    assert g.genes[0].bounds.minimum == -1.0
    assert g.recipe([0.0] * 4)["models"][0]["parameters"]["weight"] == -1.0


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"layer_granularity": 3},
            "genome.layer_granularity: 3 does not divide the model's 4 layers",
        ),
        ({"search": {"lambada": [0, 1]}}, "genome.search: ties has no parameter 'lambada'"),
        (
            {"search": {"lambda": [0, 1]}, "parameters": {"lambda": 1}},
            "genome: 'lambda' is both searched and fixed",
        ),
        (
            {"search": {"int8_mask": [0, 1]}},
            "genome.search.int8_mask: bool parameters cannot be searched",
        ),
        ({"merge_method": "karcher"}, "genome: say which parameters of karcher to search"),
        ({"search": {"weight": [1, 0]}}, "genome.search.weight: min (1) must be below max (0)"),
    ],
)
def test_genome_errors_name_the_key(keys: dict[str, object], message: str) -> None:
    with pytest.raises(RecipeError) as err:
        genome(**keys)
    assert err.value.message == message


def test_lambda_has_no_default_bounds() -> None:
    with pytest.raises(RecipeError) as err:
        genome(search={"lambda": None})
    assert "genome.search.lambda" in err.value.message
