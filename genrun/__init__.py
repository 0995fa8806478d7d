"""genrun: the torch-free runtime (numpy, pillow, onnxruntime). Data readers
live here so that training and serving read images the same way.

`genrun.load`, `genrun.Sampler` and `genrun.Scorer` are imported on first use,
so `gentrain` (which reads data through genrun) never loads onnxruntime."""

from __future__ import annotations

from typing import Any

_LAZY = {"load": "engine", "Engine": "engine", "Sampler": "sampler", "Scorer": "scorer"}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'genrun' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"genrun.{_LAZY[name]}"), name)
