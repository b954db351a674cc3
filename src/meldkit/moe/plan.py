"""Planning a MoE build from headers only: every problem of recipe and inputs at once.

:func:`plan_moe` opens the base and every expert (folders, hub ids, ``+lora``) as merges do,
runs MergeKit's recipe checks, picks the output architecture, checks that every expert has the
base's layers and MLP shapes, and lays out every output tensor and shard. Nothing is read but
safetensors headers and config.json; torch is not imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meldkit.errors import PlanError, RecipeError
from meldkit.io.dtypes import dtype_name, itemsize, parse_dtype_name
from meldkit.io.writer import OutputTensorSpec, ShardLayout, plan_shards
from meldkit.moe.architectures import (
    PROJECTIONS,
    ExpertLayout,
    OutputArch,
    find_output_arch,
    output_config,
)
from meldkit.moe.config import (
    PROMPTLESS_GATE_MODES,
    ExpertConfig,
    MoeConfig,
    config_problems,
    duplicate_prompt_warnings,
    load_moe_config,
)
from meldkit.moe.tensors import MoeTensor, Source, is_mlp_tensor, layer_tensors, mlp_name
from meldkit.plan.models import InputModelInfo, open_models, recipe_folder

__all__ = ["MoeOptions", "MoePlan", "plan_moe"]


@dataclass(frozen=True)
class MoeOptions:
    """How to plan a build: shard size, hub cache, expert layout, MergeKit's identical-experts
    opt-in (``--i-understand-this-is-not-useful-without-training``)."""

    out_shard_size: int = 5_000_000_000
    cache_dir: str | None = None
    expert_layout: ExpertLayout = "auto"
    allow_identical_experts: bool = False


@dataclass
class MoePlan:
    """Everything a build needs: inputs, output architecture, tensors, shards, config."""

    config: MoeConfig
    options: MoeOptions
    arch: OutputArch
    models: dict[str, InputModelInfo]
    base: str
    experts: list[ExpertConfig]  # routed, then shared
    expert_models: list[str]  # the model key of each
    num_layers: int
    hidden: int
    dtype: str  # safetensors code of the output
    tensors: list[MoeTensor]
    shards: list[ShardLayout]
    out_config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def n_routed(self) -> int:
        return len(self.config.experts)

    @property
    def total_bytes(self) -> int:
        return sum(s.file_size for s in self.shards)

    @property
    def read_bytes(self) -> int:
        """Bytes of input tensors read (each source once per use)."""
        total = 0
        for t in self.tensors:
            sources = [t.source] if t.source else [s for b in t.blocks for s in b.parts]
            for s in sources:
                info = self.models[s.model].index.tensors[s.name]
                total += info.end - info.start
        return total

    @property
    def peak_bytes(self) -> int:
        """Estimated tensor memory: the largest block read (input dtype) plus its float32 math
        and its cast output, or the largest copied tensor likewise."""
        peak = 0
        for t in self.tensors:
            if t.kind == "expert":
                numel = max(sum(self._numel(s) for s in b.parts) for b in t.blocks)
            elif t.kind == "copy" and t.source is not None:
                numel = self._numel(t.source)
            else:
                numel = t.spec.numel
            peak = max(peak, numel * (4 + 4 + itemsize(self.dtype)))
        return peak

    def _numel(self, source: Source) -> int:
        info = self.models[source.model].index.tensors[source.name]
        n = 1
        for d in info.shape:
            n *= d
        return n


def _model_type(info: InputModelInfo) -> str | None:
    cfg = info.config or {}
    value = cfg.get("model_type")
    return str(value) if value is not None else None


def _check_expert(
    where: str, info: InputModelInfo, base: InputModelInfo, prefix: str, layers: int
) -> list[str]:
    problems: list[str] = []
    if info.layout.num_layers != layers:
        return [f"{where} has {info.layout.num_layers} layers, the base model {layers}"]
    for i in range(layers):
        for p in PROJECTIONS:
            name = mlp_name(prefix, i, p)
            want = base.index.tensors.get(name)
            got = info.index.tensors.get(name)
            if got is None:
                problems.append(f"{where} has no '{name}' (a dense gated MLP is needed)")
            elif want is not None and got.shape != want.shape:
                problems.append(
                    f"{where}: '{name}' has shape {list(got.shape)}, the base's {list(want.shape)}"
                )
    return problems[:5]  # the first few say it all for a model of another size


def _check_base(arch: OutputArch, base: InputModelInfo, prefix: str) -> list[str]:
    problems: list[str] = []
    names = base.index.tensors
    if any(n.startswith(prefix) and ".mlp." in n and n.endswith(".bias") for n in names):
        problems.append(f"{base.key} has MLP biases, which no MoE output can hold")
    if arch.name == "mixtral" and any(".self_attn." in n and n.endswith(".bias") for n in names):
        problems.append(
            f"{base.key} has attention biases, which Mixtral cannot hold (use architecture: qwen)"
        )
    if any(mlp_name(prefix, 0, p) not in names for p in PROJECTIONS):
        problems.append(f"{base.key} has no dense gated MLP (mlp.gate_proj/up_proj/down_proj)")
    cfg = base.config or {}
    if "intermediate_size" not in cfg or "hidden_size" not in cfg:
        problems.append(f"{base.key}: config.json lacks hidden_size or intermediate_size")
    return problems


def _output_dtype(config: MoeConfig, base: InputModelInfo) -> str:
    """The recipe's dtype, else the base config's (as MergeKit), else its embedding's."""
    if config.dtype is not None:
        return parse_dtype_name(config.dtype)
    cfg = base.config or {}
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    if isinstance(name, str):
        try:
            return parse_dtype_name(name)
        except RecipeError:
            pass  # an odd config value: the weights say what they are
    embed = base.layout.input_embedding
    if embed is not None and embed in base.index.tensors:
        return base.index.tensors[embed].dtype
    return "F32"


def _base_tensors(
    base: InputModelInfo, dtype: str
) -> tuple[list[MoeTensor], dict[int, list[MoeTensor]], list[MoeTensor]]:
    """The base's tensors kept as they are: before the stack, per layer, after it."""
    layout = base.layout
    pre: list[MoeTensor] = []
    post: list[MoeTensor] = []
    per_layer: dict[int, list[MoeTensor]] = {i: [] for i in range(layout.num_layers)}

    def copy(name: str) -> MoeTensor:
        shape = base.index.tensors[name].shape
        return MoeTensor(
            OutputTensorSpec(name, dtype, shape), "copy", source=Source(base.key, name)
        )

    pre = [copy(n) for n in layout.pre]
    post = [copy(n) for n in layout.post]
    for i, suffixes in sorted(layout.layer_suffixes.items()):
        for s in suffixes:
            name = layout.layer_tensor(i, s)
            if not is_mlp_tensor(name):
                per_layer[i].append(copy(name))
    return pre, per_layer, post


def _zero_biases(arch: OutputArch, base: InputModelInfo, layer: int, dtype: str) -> list[MoeTensor]:
    """Qwen2-MoE always has q/k/v biases: zeros where the base (Llama, Mistral) has none."""
    if arch.name != "qwen":
        return []
    out = []
    for p in ("q_proj", "k_proj", "v_proj"):
        name = base.layout.layer_tensor(layer, f"self_attn.{p}.weight")
        bias = name[: -len("weight")] + "bias"
        if name in base.index.tensors and bias not in base.index.tensors:
            rows = base.index.tensors[name].shape[0]
            out.append(MoeTensor(OutputTensorSpec(bias, dtype, (rows,)), "zeros"))
    return out


def _check_experts(
    config: MoeConfig,
    arch: OutputArch,
    models: dict[str, InputModelInfo],
    base: InputModelInfo,
    expert_keys: list[str],
) -> list[str]:
    """Every expert against the base (layers, MLP shapes); the prompts the output needs."""
    problems: list[str] = []
    prefix, layers = base.layout.stack_prefix or "model.layers.", base.layout.num_layers
    n = len(config.experts)
    for i, (e, key) in enumerate(zip([*config.experts, *config.shared_experts], expert_keys)):
        where = f"experts[{i}]" if i < n else f"shared_experts[{i - n}]"
        problems += _check_expert(f"{where} ({e.source_model})", models[key], base, prefix, layers)
    shared = config.shared_experts[0] if config.shared_experts else None
    if (
        arch.name == "qwen"
        and shared is not None
        and not shared.positive_prompts
        and config.gate_mode not in PROMPTLESS_GATE_MODES
    ):
        problems.append(
            "shared_experts[0] has no positive_prompts; Qwen2-MoE's shared-expert gate is "
            "made from them (or use gate_mode: random)"
        )
    if config.gate_mode.startswith("hidden") and base.lora_folder is not None:
        problems.append(
            f"gate_mode '{config.gate_mode}' runs the base model's folder; a base with a LoRA "
            f"adapter ({config.base_model}) is not supported there"
        )
    return problems


def plan_moe(recipe: Any, options: MoeOptions | None = None) -> MoePlan:
    """Plan a MoE build from a recipe (path, YAML text, dict or :class:`MoeConfig`).

    Raises :class:`~meldkit.errors.PlanError` with every problem found.
    """
    options = options or MoeOptions()
    config = load_moe_config(recipe)
    problems = config_problems(config, options.allow_identical_experts)
    experts = [*config.experts, *config.shared_experts]
    refs = [config.base_model, *(e.source_model for e in experts)]
    models, input_problems = open_models(
        refs, cache_dir=options.cache_dir, recipe_dir=recipe_folder(recipe)
    )
    problems += input_problems
    if problems or str(config.base_model) not in models:
        raise PlanError(problems or ["the base model could not be opened"], hint=_HINT)
    base = models[str(config.base_model)]
    expert_keys = [str(e.source_model) for e in experts]
    types = {_model_type(models[k]) for k in {base.key, *expert_keys} if k in models}
    if None in types:
        problems.append("a model has no model_type in config.json; cannot choose the output")
    arch, why = find_output_arch(
        config.architecture, {t for t in types if t}, len(config.shared_experts)
    )
    if arch is None:
        problems.append(str(why))
        raise PlanError(problems, hint=_HINT)
    problems += _check_base(arch, base, base.layout.stack_prefix or "")
    problems += _check_experts(config, arch, models, base, expert_keys)
    if problems:
        raise PlanError(problems, hint=_HINT)
    prefix, layers = base.layout.stack_prefix or "model.layers.", base.layout.num_layers
    dtype = _output_dtype(config, base)
    shapes = {p: base.index.tensors[mlp_name(prefix, 0, p)].shape for p in PROJECTIONS}
    pre, per_layer, post = _base_tensors(base, dtype)
    tensors = list(pre)
    for i in range(layers):
        tensors += per_layer[i] + _zero_biases(arch, base, i, dtype)
        tensors += layer_tensors(
            arch, options.expert_layout, prefix, i, expert_keys, len(config.experts), shapes, dtype
        )
    tensors += post
    shards = plan_shards([t.spec for t in tensors], options.out_shard_size, {"meldkit": "moe"})
    cfg = output_config(
        arch,
        dict(base.config or {}),
        len(config.experts),
        len(config.shared_experts),
        config.experts_per_token,
        dtype_name(dtype),
    )
    return MoePlan(
        config,
        options,
        arch,
        models,
        base.key,
        experts,
        expert_keys,
        layers,
        int(shapes["gate_proj"][1]),
        dtype,
        tensors,
        shards,
        cfg,
        _plan_warnings(config, arch),
    )


_HINT = "fix the recipe or the models it names; `meldkit plan` shows every problem at once"


def _plan_warnings(config: MoeConfig, arch: OutputArch) -> list[str]:
    warnings = list(config.warnings) + duplicate_prompt_warnings(config)
    n = len(config.experts)
    if arch.name == "mixtral" and n & (n - 1):
        warnings.append(
            f"{n} experts is not a power of two; llama.cpp and some other loaders expect one"
        )
    if arch.name != "qwen" and any(e.positive_prompts for e in config.shared_experts):
        warnings.append(f"{arch.title}'s shared expert has no gate: its prompts are not used")
    if not arch.native:
        warnings.append(
            f"{arch.title} is not in transformers: loading the output needs the remote code of "
            "deepseek-ai/deepseek-moe-16b-base (trust_remote_code=True); meldkit never runs it"
        )
    return warnings
