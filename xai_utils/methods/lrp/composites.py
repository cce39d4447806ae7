"""Named composites: which LRP rule each layer type gets (Montavon et al. 2019, sec. 10.3:
different rules for upper, middle and lower layers; Kohlbrenner et al. 2020, "Towards best
practice in explaining neural network decisions with LRP", for the epsilon + z+/alpha-beta
mixes).

A composite maps convolutions, linear layers, the pixel layer (the first convolution or
linear layer, which receives the model's input) and max-pooling to rules. The names mirror
Zennit's composites where they exist: `epsilon_plus_flat` = EpsilonPlusFlat,
`epsilon_alpha2beta1` = EpsilonAlpha2Beta1, `epsilon_gamma_box` = EpsilonGammaBox. `thesis`
is the setup of the MEng thesis "Deep Introspection" (ch. 3.3.1): alpha=2, beta=1 on every
convolution and linear layer, z^B at the pixel layer, winner-take-all max-pooling.
`zplus_box` (z+ on every convolution and linear layer, z^B at the pixels) is the setup of
the class-contrastive variants, CLRP (Gu et al. 2018) and SGLRP (Iwana et al. 2019): z+
keeps any output relevance stable, where the epsilon rule divides it by logits near zero.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from xai_utils.core.inputs import ModelInfo, input_spec
from xai_utils.methods.lrp.rules import (
    AffineEpsilon,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    ProportionalMaxPool,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
)

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR = (nn.Linear,)


@dataclass
class Composite:
    """Rules per layer type. `pixel` (optional) overrides the rule of the pixel layer."""

    name: str
    conv: Rule
    linear: Rule
    pixel: Rule | None = None
    maxpool: Rule | None = None  # None = winner-take-all (the plain gradient)
    affine: Rule = field(default_factory=AffineEpsilon)  # BatchNorm after no convolution

    def rule_for(self, module: nn.Module) -> Rule | None:
        if isinstance(module, CONV):
            return self.conv
        if isinstance(module, LINEAR):
            return self.linear
        if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            return self.maxpool
        return None


def input_bounds(model: nn.Module, batch: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest model input: pixels 0 and 1 through the model's mean and std.

    From `model.xai` (1 x C x 1 x 1) when the model carries it (`load_model`, `xu.wrap`).
    Otherwise from `batch` (B x C x 1 x 1, per image and channel): the documented default
    preprocessing's bounds (ImageNet statistics), widened to the image's own minimum and
    maximum, with a warning when an image leaves them (its preprocessing is unknown).
    """
    if isinstance(getattr(model, "xai", None), ModelInfo):
        spec = input_spec(model, dtype=torch.float64)
        return spec.low, spec.high
    if batch is None:
        raise ValueError("the z^B rule needs the input's bounds: the model has no `xai` "
                         "preprocessing info (see xu.wrap), so pass bounds=(low, high)")
    spec = input_spec(model, device=batch.device, dtype=batch.dtype)
    low = spec.low.expand(batch.shape[0], -1, -1, -1)
    high = spec.high.expand(batch.shape[0], -1, -1, -1)
    lo = batch.detach().amin(dim=(2, 3), keepdim=True)
    hi = batch.detach().amax(dim=(2, 3), keepdim=True)
    if low.shape[1] != batch.shape[1] or (lo < low).any() or (hi > high).any():
        warnings.warn("LRP's z^B bounds: the model carries no preprocessing (xu.wrap(model, "
                      "mean=..., std=...) or bounds=(low, high) set it) and the input leaves "
                      "the ImageNet defaults' range, so each image's own minimum and maximum "
                      "are used", stacklevel=3)
        if low.shape[1] != batch.shape[1]:
            return lo, hi
    return torch.minimum(low, lo), torch.maximum(high, hi)


def _build(name: str, p: dict) -> Composite:
    stab, gamma, alpha, beta = p["stabilizer"], p["gamma"], p["alpha"], p["beta"]
    kw = {} if p["bias"] is None else {"bias": p["bias"]}

    def eps():
        return Epsilon(p["epsilon"], **kw)

    def ab(a: float, b: float):
        return AlphaBeta(a, b, stab, **kw)

    def plus():
        return ZPlus(stab, **kw)

    def gam():
        return Gamma(gamma, stab, **kw)

    def box():
        return ZBox(*p["bounds"](), stabilizer=stab)

    table = {
        "epsilon": lambda: Composite(name, eps(), eps()),
        "zplus": lambda: Composite(name, plus(), plus()),
        "zplus_box": lambda: Composite(name, plus(), plus(), box()),
        "alpha2beta1": lambda: Composite(name, ab(2, 1), ab(2, 1)),
        "alpha1beta0": lambda: Composite(name, ab(1, 0), ab(1, 0)),
        "alphabeta": lambda: Composite(name, ab(alpha, beta), ab(alpha, beta)),
        "gamma": lambda: Composite(name, gam(), gam()),
        "epsilon_plus": lambda: Composite(name, plus(), eps()),
        "epsilon_plus_flat": lambda: Composite(name, plus(), eps(), Flat(stab)),
        "epsilon_alpha2beta1": lambda: Composite(name, ab(2, 1), eps()),
        "epsilon_alpha2beta1_flat": lambda: Composite(name, ab(2, 1), eps(), Flat(stab)),
        "epsilon_gamma_box": lambda: Composite(name, gam(), eps(), box()),
        "epsilon_wsquare": lambda: Composite(name, eps(), eps(), WSquare(stab)),
        "thesis": lambda: Composite(name, ab(alpha, beta), ab(alpha, beta), box()),
    }
    if name not in table:
        close = difflib.get_close_matches(name, table, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown LRP composite {name!r}.{hint} "
                         f"Available: {', '.join(sorted(table))}")
    return table[name]()


COMPOSITES = ("epsilon", "zplus", "zplus_box", "alpha2beta1", "alpha1beta0", "alphabeta", "gamma",
              "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2beta1",
              "epsilon_alpha2beta1_flat", "epsilon_gamma_box", "epsilon_wsquare", "thesis")


def get_composite(composite: str | Composite, model: nn.Module | None = None, *,
                  epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0,
                  beta: float = 1.0, stabilizer: float = 1e-6, bounds=None,
                  maxpool: str = "wta", bias: bool | None = None,
                  batch: torch.Tensor | None = None) -> Composite:
    """A `Composite` by name (or the one given), with its parameters.

    `bounds`: (low, high) of the model input for z^B; by default `input_bounds(model,
    batch)`: from `model.xai`, else from the batch's values.
    `maxpool`: "wta" (winner-take-all, the gradient) or "proportional".
    `bias`: whether biases enter the denominators (None: each rule's default, see rules.py).
    """
    if maxpool not in ("wta", "proportional"):
        raise ValueError(f"maxpool must be 'wta' or 'proportional', got {maxpool!r}")
    if isinstance(composite, Composite):
        comp = composite
    else:
        def get_bounds():
            return bounds if bounds is not None else input_bounds(model, batch)
        params = dict(epsilon=epsilon, gamma=gamma, alpha=alpha, beta=beta,
                      stabilizer=stabilizer, bounds=get_bounds, bias=bias)
        comp = replace(_build(str(composite), params), affine=AffineEpsilon(epsilon))
    if maxpool == "proportional" and comp.maxpool is None:
        comp = replace(comp, maxpool=ProportionalMaxPool())
    return comp
