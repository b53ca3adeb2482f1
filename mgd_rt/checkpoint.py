"""Read, convert and validate MGD-SAM2 (and SAM2.1) checkpoints.

Pickles are opened with ``weights_only=True`` only: a file that needs code to load is refused.
Every tensor of an MGD-SAM2 checkpoint is accounted for: loaded into the model (the adapters
the authors create but never run are loaded too, and reported), or it is an error.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mgd_rt.errors import MgdRtError, first_line
from mgd_rt.model.variants import VARIANTS

log = logging.getLogger("mgd_rt")

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
# SAM2.1 keeps these under its prompt encoder; MGD-SAM2 has them at the top level
_SAM2_RENAMES = {
    "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": "pe_layer.positional_encoding_gaussian_matrix",
    "sam_prompt_encoder.no_mask_embed.weight": "no_mask_embed.weight",
}
_MAX_LISTED = 12


def _describe(names: list[str], shapes: dict[str, tuple]) -> str:
    shown = [f"{n} {list(shapes[n])}" if n in shapes else n for n in names[:_MAX_LISTED]]
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return ", ".join(shown) + more


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``{"model": ...}`` / ``{"state_dict": ...}``
    and stripped of ``module.`` prefixes."""
    path = Path(path)
    if not path.is_file():
        raise MgdRtError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise MgdRtError(f"{path}: not a readable safetensors file ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Weights only load failed" in str(exc):
                raise MgdRtError(
                    f"{path}: this pickle needs code to load, which mgd-rt refuses "
                    "(weights_only=True); save the state dict alone or as .safetensors"
                ) from None
            raise MgdRtError(f"{path}: not a PyTorch checkpoint ({first_line(exc)})") from None
        except Exception as exc:  # any failure to parse a user's file is that file's problem
            raise MgdRtError(
                f"{path}: unreadable checkpoint, truncated or not a PyTorch file "
                f"({first_line(exc)})"
            ) from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MgdRtError(f"{path}: holds no state dict of tensors (found {type(obj).__name__})")
    return {re.sub(r"^(module\.)+", "", k): v for k, v in obj.items()}


def checkpoint_kind(state_dict: dict[str, torch.Tensor]) -> str:
    """'mgd-sam2' (the authors' training output) or 'sam2' (Meta's SAM2/SAM2.1 release)."""
    if any(k.startswith(("detail_enhance.", "image_encoder.trunk.mpadapter.")) for k in state_dict):
        return "mgd-sam2"
    if any(k.startswith(("sam_prompt_encoder.", "memory_attention.", "memory_encoder.")) for k in state_dict):
        return "sam2"
    raise MgdRtError(
        "no MGD-SAM2 or SAM2 tensors (image_encoder.trunk.*, detail_enhance.*, "
        "sam_prompt_encoder.*) in this state dict"
    )


def detect_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """The variant whose trunk (embed dim, blocks per stage) matches the tensor shapes."""
    prefix = "image_encoder.trunk."
    if prefix + "pos_embed" not in state_dict:
        raise MgdRtError(f"cannot detect the variant: no {prefix}pos_embed tensor")
    embed_dim = state_dict[prefix + "pos_embed"].shape[1]
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    # a block that changes width (has .proj) starts a new stage
    starts = sorted(i for i in blocks if f"{prefix}blocks.{i}.proj.weight" in state_dict)
    bounds = [0, *starts, len(blocks)]
    stages = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    for name, variant in VARIANTS.items():
        if variant.embed_dim == embed_dim and variant.stages == stages:
            return name
    raise MgdRtError(f"no known variant has embed_dim={embed_dim} and stages={stages}")


@dataclass
class LoadReport:
    """What loading a checkpoint did, tensor by tensor."""

    source: str
    kind: str
    variant: str
    loaded: list[str] = field(default_factory=list)
    unused_by_forward: list[str] = field(default_factory=list)  # loaded, never run
    kept_init: list[str] = field(default_factory=list)  # model tensors the file did not set
    ignored: list[str] = field(default_factory=list)  # file tensors MGD-SAM2 has no use for

    def summary(self) -> str:
        parts = [f"{self.source}: {self.kind} checkpoint, variant {self.variant}, {len(self.loaded)} tensors loaded"]
        if self.unused_by_forward:
            parts.append(f"{len(self.unused_by_forward)} of them belong to adapters the authors create but never run")
        if self.kept_init:
            parts.append(f"{len(self.kept_init)} model tensors keep their initialisation")
        if self.ignored:
            parts.append(f"{len(self.ignored)} checkpoint tensors are not used by MGD-SAM2")
        return "; ".join(parts)


def load_checkpoint(model: nn.Module, path: str | Path, state_dict: dict | None = None) -> LoadReport:
    """Load ``path`` into ``model`` (an MGDSAM2) and say what happened to every tensor."""
    state_dict = read_state_dict(path) if state_dict is None else state_dict
    kind = checkpoint_kind(state_dict)
    variant = detect_variant(state_dict)
    if variant != model.variant.name:
        raise MgdRtError(
            f"{path}: checkpoint is variant {variant!r} but variant {model.variant.name!r} was asked for; "
            f"leave the variant out or pass {variant!r}"
        )
    expected = model.state_dict()
    expected_shapes = {k: tuple(v.shape) for k, v in expected.items()}
    given_shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    report = LoadReport(str(path), kind, variant)
    unused_prefixes = tuple(
        f"image_encoder.trunk.mpadapter.{p}." for p in model.image_encoder.trunk.mpadapter.unused_prefixes
    )
    if kind == "mgd-sam2":
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        mismatched = [k for k in state_dict if k in expected and given_shapes[k] != expected_shapes[k]]
        problems = []
        if missing:
            problems.append(f"missing {len(missing)}: {_describe(missing, expected_shapes)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)}: {_describe(unexpected, given_shapes)}")
        if mismatched:
            shown = [
                f"{k} {list(given_shapes[k])} (model {list(expected_shapes[k])})" for k in mismatched[:_MAX_LISTED]
            ]
            problems.append(f"wrong shape {len(mismatched)}: {', '.join(shown)}")
        if problems:
            raise MgdRtError(f"{path}: does not match MGD-SAM2 {variant}: " + "; ".join(problems))
        model.load_state_dict(state_dict, strict=True)
        report.loaded = list(state_dict)
        report.unused_by_forward = [k for k in state_dict if k.startswith(unused_prefixes)]
    else:
        renamed = {_SAM2_RENAMES.get(k, k): v for k, v in state_dict.items()}
        usable = {k: v for k, v in renamed.items() if k in expected and tuple(v.shape) == expected_shapes[k]}
        model.load_state_dict(usable, strict=False)
        report.loaded = list(usable)
        report.kept_init = [k for k in expected if k not in usable]
        report.ignored = [k for k in renamed if k not in usable]
        log.warning(
            "%s: SAM2 checkpoint: encoder and decoder loaded; MGD-SAM2's adapters, MCEM, HMIM and DRM "
            "(and SAM2 tensors of other shapes: %s) keep their initialisation",
            path,
            _describe([k for k in report.kept_init if k in renamed], expected_shapes) or "none",
        )
    model.trained = kind == "mgd-sam2"
    log.info(report.summary())
    return report


UNTRAINED_SEED = 0


def _perturb_untrained(model: nn.Module, seed: int) -> None:
    """Make seeded default-initialised weights exercise every module.

    PyTorch's defaults leave norms at identity, BatchNorm statistics at 0/1 and Hiera's
    position embeddings at zero, and give logits with std ~0.002 (every mask empty). Like the
    authors' fixture, perturb those and widen the final 1x1 conv so the logits spread
    (std ~0.1-1) and each module visibly changes the output.
    """
    generator = torch.Generator().manual_seed(seed)

    def noise(t: torch.Tensor, std: float) -> torch.Tensor:
        return torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t) * std

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)) or type(module).__name__ == "LayerNorm2d":
                module.weight.add_(noise(module.weight, 0.05))
                module.bias.add_(noise(module.bias, 0.05))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(noise(module.running_mean, 0.1))
                module.running_var.copy_(1.0 + noise(module.running_var, 0.3).abs())
        trunk = model.image_encoder.trunk
        trunk.pos_embed.copy_(noise(trunk.pos_embed, 0.05))
        trunk.pos_embed_window.copy_(noise(trunk.pos_embed_window, 0.05))
        out_conv = model.detail_enhance.out_conv
        out_conv.weight.copy_(noise(out_conv.weight, 8.0))


def build_architecture(variant: str, image_size: int | None = None, seed: int = UNTRAINED_SEED) -> nn.Module:
    """A ``variant`` MGDSAM2 as its modules initialise it, from ``seed`` and without touching the caller's random
    state: the network before any weights are loaded (what load_model fills, and all a FLOP count needs).
    ``image_size``: None for the variant's default."""
    from mgd_rt.model import MGDSAM2, get_variant

    spec = get_variant(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MGDSAM2(spec, image_size or spec.default_image_size)


def load_model(
    checkpoint: str | Path | None = None,
    variant: str | None = None,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
    seed: int = UNTRAINED_SEED,
) -> nn.Module:
    """An MGDSAM2 in eval mode on ``device``.

    With ``checkpoint`` the variant is detected from its tensor shapes (``variant``, if given,
    must agree). Without one the weights are seeded random ("untrained", for tests and
    benchmarks) and ``variant`` defaults to ``b+``. ``image_size`` defaults to the variant's
    (1024; 512 for ``tiny``).
    """
    from mgd_rt.model import get_variant

    state_dict = None
    if checkpoint is not None:
        state_dict = read_state_dict(checkpoint)
        detected = detect_variant(state_dict)
        if variant is not None and get_variant(variant).name != detected:
            raise MgdRtError(
                f"{checkpoint}: checkpoint is variant {detected!r} but variant {variant!r} was asked for; "
                f"leave the variant out or pass {detected!r}"
            )
        variant = detected
    spec = get_variant(variant or "b+")
    model = build_architecture(spec.name, image_size, seed)
    if checkpoint is None:
        _perturb_untrained(model, seed)
        log.warning("no checkpoint: MGD-SAM2 %s with UNTRAINED seeded weights (seed %d)", spec.name, seed)
    else:
        load_checkpoint(model, checkpoint, state_dict)
    return model.to(device).eval()
