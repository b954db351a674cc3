"""Choosing the math device: ``cpu`` (default), ``cuda[:N]``, or ``auto``."""

from __future__ import annotations

from meldkit.errors import MeldError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> str:
    """Validate ``name`` and turn ``auto`` into ``cuda`` when a GPU is available, else ``cpu``."""
    import torch

    name = (name or "cpu").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MeldError(
                f"device '{name}' was asked for but no CUDA GPU is available",
                hint="use --device cpu (the default) or --device auto",
            )
        return name
    raise MeldError(f"unknown device '{name}'", hint="use cpu, cuda, cuda:N or auto")
