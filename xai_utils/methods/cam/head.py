"""CAM's precondition: a head of global average pooling and one linear layer, and nothing
between them that is not a pass-through (Zhou et al. 2016, sec. 2).

Recognised pools: a module `global_pool` / `avgpool` / `pool` on the model, or a
`global_pool` inside `head` (timm's ClassifierHead and NormMlpClassifierHead); DenseNet's
functional `adaptive_avg_pool2d`. Refusals (`MethodNotApplicable`) name what is missing
or in the way: a class-token head (ViT, DeiT), a pool that is not global average, a
LayerNorm between pool and linear layer (ConvNeXt), several linear layers (VGG, MobileNet).
"""

from __future__ import annotations

from torch import nn

from xai_utils.core.model_state import PASS_THROUGH
from xai_utils.core.outputs import unwrap
from xai_utils.core.registry import MethodNotApplicable

PASS = (*PASS_THROUGH, nn.Linear)  # what may sit between the pool and the classifier


def _is_gap(pool: nn.Module) -> bool:
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        return pool.output_size in (1, (1, 1))
    return getattr(pool, "pool_type", None) == "avg"


def _find_pool(model: nn.Module) -> tuple[str, nn.Module | None] | None:
    for name in ("global_pool", "avgpool", "pool"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name, getattr(model, name)
    head_pool = getattr(getattr(model, "head", None), "global_pool", None)
    if isinstance(head_pool, nn.Module):
        return "head.global_pool", head_pool
    if type(model).__name__ == "DenseNet":
        return "adaptive_avg_pool2d (functional)", None
    return None


def _pool_modules(pool: nn.Module | None) -> set[nn.Module]:
    return set() if pool is None else set(pool.modules())


def global_pool_layer(model: nn.Module) -> str | None:
    """The name of the module that pools the last map into the vector the classifier reads,
    or None where there is none (class-token heads, DenseNet's functional pool)."""
    inner, prefix = unwrap(model)
    found = _find_pool(inner)
    return prefix + found[0] if found is not None and found[1] is not None else None


def gap_linear_head(model: nn.Module) -> nn.Linear:
    """The single linear layer behind a global average pool, or `MethodNotApplicable`
    naming what is missing or in the way (CAM is defined only for that head)."""
    inner, _ = unwrap(model)
    problems = []
    pool_type = getattr(inner, "global_pool", None)
    class_token = hasattr(inner, "class_token") or (
        hasattr(inner, "cls_token") and pool_type in ("token", ""))
    found = _find_pool(inner)
    if class_token:
        problems.append("its head reads the class token, not a global average pool")
    elif found is None:
        problems.append("no global pooling module (looked for global_pool, avgpool, pool, "
                        "head.global_pool)")
    elif found[1] is not None and not _is_gap(found[1]):
        problems.append(f"{found[0]} = {found[1]} is not a global average pool")
    head_name = next((n for n in ("head", "heads", "classifier", "fc")
                      if isinstance(getattr(inner, n, None), nn.Module)), None)
    if head_name is None:
        problems.append("no classifier module (looked for fc, classifier, head, heads)")
        linears = []
    else:
        head = getattr(inner, head_name)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if len(linears) != 1:
            problems.append(f"its classifier has {len(linears)} linear layers, not one")
        pool_parts = _pool_modules(found[1] if found else None)
        for name, module in head.named_modules():
            leaf = not any(True for _ in module.children())
            if leaf and module not in pool_parts and not isinstance(module, PASS):
                where = f"{head_name}.{name}" if name else head_name
                problems.append(f"{where} ({type(module).__name__}) sits between the pool "
                                "and the linear layer")
    if problems:
        raise MethodNotApplicable(
            f"CAM needs global average pooling followed by one linear layer; "
            f"{type(inner).__name__}: {'; '.join(problems)}. "
            "Use Grad-CAM, which works for any head.")
    return linears[0]
