"""Flip an export form on every module of one kind (the modules that carry a second form of their math)."""

from __future__ import annotations

from torch import nn


def switch_modules(model: nn.Module, kind: type[nn.Module], attribute: str, enabled: bool) -> int:
    """Set ``attribute`` to ``enabled`` on every ``kind`` module in ``model``; returns how many."""
    modules = [module for module in model.modules() if isinstance(module, kind)]
    for module in modules:
        setattr(module, attribute, enabled)
    return len(modules)
