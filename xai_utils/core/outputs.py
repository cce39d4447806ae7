"""One tensor of logits from whatever a classifier's forward returns.

Models return a tensor, a tuple or list (Inception's `(logits, aux_logits)` in train mode,
GoogLeNet's three heads), a dict (`{"logits": ...}`) or an object with a `.logits` field
(Hugging Face outputs). `select_output` picks one B x classes tensor with the `output=`
selector; `OutputSelector` wraps a model so that every method sees that tensor.

Selectors: None (the default: a tensor as is; a dict's "logits" key, else its first tensor
value; an object's `.logits`; a sequence's first tensor), an int (position in a sequence),
a str (a dict key or an attribute name) or a callable `output -> tensor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

Selector = int | str | Callable[[object], torch.Tensor] | None


def _first_tensor(values, kind: str) -> torch.Tensor:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"the model returned a {kind} without any tensor; pass output=...")


def select_output(out, output: Selector = None) -> torch.Tensor:
    """The logits tensor inside a model's output `out`, chosen by `output` (see module)."""
    if callable(output):
        chosen = output(out)
    elif isinstance(output, int):
        if not isinstance(out, Sequence):
            raise TypeError(f"output={output} selects by position, but the model returned "
                            f"{type(out).__name__}")
        chosen = out[output]
    elif isinstance(output, str):
        if isinstance(out, Mapping):
            if output not in out:
                raise KeyError(f"output={output!r}: the model's dict has keys {list(out)}")
            chosen = out[output]
        elif hasattr(out, output):
            chosen = getattr(out, output)
        else:
            raise TypeError(f"output={output!r}: {type(out).__name__} has no such key or field")
    elif isinstance(out, torch.Tensor):
        chosen = out
    elif isinstance(out, Mapping):
        chosen = out["logits"] if "logits" in out else _first_tensor(out.values(), "dict")
    elif isinstance(getattr(out, "logits", None), torch.Tensor):
        chosen = out.logits
    elif isinstance(out, Sequence):
        chosen = _first_tensor(out, type(out).__name__)
    else:
        raise TypeError(f"the model returned {type(out).__name__}; pass output=... to pick "
                        "the logits")
    if not isinstance(chosen, torch.Tensor):
        raise TypeError(f"output={output!r} selected a {type(chosen).__name__}, not a tensor")
    return chosen


class OutputSelector(nn.Module):
    """`model` whose forward returns `select_output(model(x), output)`.

    Its layers keep their names under the prefix `model.` (e.g. `model.layer4`).
    """

    def __init__(self, model: nn.Module, output: Selector = None) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_output(self.model(x), self.output)


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The classifier inside any `OutputSelector`s and the prefix of its layer names."""
    prefix = ""
    while isinstance(model, OutputSelector):
        model, prefix = model.model, prefix + "model."
    return model, prefix
