"""Make the tiny stand-in models the example recipes refer to (``./models/...``).

    python examples/make_models.py            # writes ./models (about 2 MB, a few seconds)
    python examples/make_models.py /tmp/mk    # writes /tmp/mk/models

Everything is built with :mod:`meldkit.testing`, so no download is needed. The layout:

    models/base     an 8-layer Llama-style "pretrained" model, 64-token tokenizer
    models/math     a fine-tune of base (its own small delta)
    models/code     another fine-tune of base
    models/writer   a third fine-tune of base
    models/chat     a fine-tune of base whose tokenizer adds <|im_start|> and <|im_end|>
                    (66 tokens) and carries a ChatML chat template
    models/lora     a PEFT LoRA adapter for base (rank 4 on q_proj and v_proj)

Run the recipes from the folder that holds ``models/`` (paths in a recipe are relative to the
current directory), e.g. ``meldkit plan examples/ties.yaml``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The stand-ins' size: big enough for per-layer gradients and layer stacking to show, small
# enough that a merge takes milliseconds.
DIMS = {"num_layers": 8, "hidden": 32, "intermediate": 64, "vocab": 64, "heads": 4, "kv_heads": 2}
FINETUNES = {"math": 1, "code": 2, "writer": 3}  # name -> seed of its delta
# Each fine-tune is base + DELTA * std(tensor) * noise: large enough that different recipes
# give visibly different results even in bfloat16.
DELTA = 0.25
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LORA_RANK, LORA_ALPHA = 4, 8
LORA_TARGETS = ("q_proj", "v_proj")


def make_lora(folder: Path, base: Path, *, seed: int = 7) -> Path:
    """Write a PEFT-format LoRA adapter for ``base`` (``adapter_config.json`` and
    ``adapter_model.safetensors``), with random non-zero A and B on ``LORA_TARGETS``."""
    import torch
    from safetensors.torch import save_file

    from meldkit.testing import read_model

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, w in read_model(base).items():
        module = name.removesuffix(".weight")
        if w.ndim != 2 or module.rsplit(".", 1)[-1] not in LORA_TARGETS:
            continue
        out_f, in_f = w.shape
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(LORA_RANK, in_f, generator=g) * 0.1
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_f, LORA_RANK, generator=g) * 0.1
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "./models/base",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def make_models(root: str | Path = ".") -> dict[str, Path]:
    """Write ``root/models/{base,math,code,writer,chat,lora}``; returns them by name."""
    from meldkit.testing import make_tiny_model

    models = Path(root) / "models"
    base = make_tiny_model(models / "base", "llama", seed=0, **DIMS)
    out = {"base": base}
    for name, seed in FINETUNES.items():
        out[name] = make_tiny_model(models / name, seed=seed, base=base, delta_scale=DELTA)
    out["chat"] = make_tiny_model(
        models / "chat",
        seed=4,
        base=base,
        delta_scale=DELTA,
        added_tokens=CHAT_TOKENS,
        chat_template=CHATML,
    )
    out["lora"] = make_lora(models / "lora", base)
    return out


if __name__ == "__main__":
    made = make_models(sys.argv[1] if len(sys.argv) > 1 else ".")
    for name, path in made.items():
        print(f"{name:7} {path}")
