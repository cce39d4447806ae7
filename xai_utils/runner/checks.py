"""What a dataset run checks before any work, and how it stops a run that fails throughout.

`check_run` refuses a misconfigured run at once, before a store is written: an unknown
method, a parameter the method does not take or of the wrong type, a class index out of the
model's range, a bad dtype or batch size, and anything else the method itself refuses when it
runs once, briefly, on a grey image (a missing layer, an unknown composite, a value out of
range; its cost cut to one step or one window, `MethodInfo.probe`). `FailureGuard` stops a
run whose first items all fail for one reason, instead of failing every item of a dataset.
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections import Counter
from dataclasses import dataclass, field, fields, is_dataclass

import torch
from torch import nn

from xai_utils.core.inputs import input_spec, model_info
from xai_utils.core.model_state import model_device
from xai_utils.core.registry import explain, method_info

RESERVED = ("model", "x", "target")  # given by the runner, never by --param


class ConfigError(ValueError):
    """A run that cannot work as configured; raised before anything is written."""


def _accepts(value, hint) -> bool:
    """Whether `value` (as read from JSON) fits the annotation `hint`; unknown kinds pass."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_accepts(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list):
        return isinstance(value, (list, tuple))
    if isinstance(hint, type) and hint.__module__ == "builtins":
        return isinstance(value, hint)
    if origin is not None and origin.__module__ == "collections.abc":  # Sequence[...], ...
        return isinstance(value, (list, tuple))
    return not isinstance(value, (int, float, str, bool, list, dict)) or value is None


def _describe(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def check_params(method: str, params: dict) -> None:
    """Raise `ConfigError` for a parameter `method` does not take or of the wrong type.

    Names are checked against the method's signature (and, for a method taking `**options`,
    against the fields of the settings it documents in `MethodInfo.options`); values against
    the annotations where they name plain types (bool, int, float, str, Literal, sequences).
    """
    info = _method(method)
    signature = inspect.signature(info.fn)
    hints = typing.get_type_hints(info.fn)
    named = {n: p for n, p in signature.parameters.items()
             if n not in RESERVED and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    open_ended = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    options = {f.name: f.type for f in fields(info.options)} if is_dataclass(info.options) else {}
    if options:
        hints = {**typing.get_type_hints(info.options), **hints}
    for name, value in params.items():
        if name in RESERVED:
            raise ConfigError(f"{name!r} is given by the runner, not as a parameter of {method}")
        if name not in named and name not in options and not (open_ended and not options):
            known = sorted([*named, *options])
            close = difflib.get_close_matches(name, known, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"{method} has no parameter {name!r}.{hint} "
                              f"Its parameters: {', '.join(known)}")
        if name in hints and not _accepts(value, hints[name]):
            raise ConfigError(f"{method}: parameter {name}={value!r} should be "
                              f"{_describe(hints[name])}")


def _method(method: str):
    try:
        return method_info(method)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_run(method: str, model: nn.Module, params: dict, target, dtype: str,
              batch_size: int, num_workers: int, max_failures: int) -> None:
    """Everything a run can know to be wrong before it starts (see the module docstring)."""
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be float16 or float32, got {dtype!r}")
    if not (target in ("top", "label") or (isinstance(target, int)
                                           and not isinstance(target, bool))):
        raise ConfigError(f"target must be 'top', 'label' or a class index, got {target!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                             ("max_failures", max_failures, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    info = _method(method)
    check_params(method, params)
    spec, size = input_spec(model, device=model_device(model)), model_info(model).input_size
    grey = spec.normalize(torch.full((1, 3, size, size), 0.5, device=model_device(model)))
    with torch.no_grad():
        classes = model(grey).shape[1]
    if isinstance(target, int) and not 0 <= target < classes:
        raise ConfigError(f"class index {target} is out of range for a model with {classes} "
                          f"classes (0..{classes - 1})")
    probe = {**params, **(info.probe(size) if info.probe else {})}
    if info.iterative:  # one step of an optimisation shows whether its settings work
        steps = probe.get("steps", 1)
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"{method}: steps must be an integer >= 1, got {steps!r}")
        probe.update(steps=1, progress=False)
    try:
        explain(method, model, grey, 0 if target in ("top", "label") else target, **probe)
    except (ValueError, TypeError, KeyError, IndexError, NotImplementedError) as err:
        # the kinds of error a method raises for its arguments; others (a RuntimeError from
        # the model, memory) may depend on the data and are left to the run and its guard
        given = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "its defaults"
        raise ConfigError(f"{method} ({given}) fails on a grey test image, tried before the "
                          f"run: {type(err).__name__}: {err}") from err
    except Exception:  # noqa: BLE001, S110 - see above: the run's guard judges these
        pass


@dataclass
class FailureGuard:
    """Stops a run whose first `limit` items all fail for one reason (`SystematicFailure`).

    Only the method's failures count (bad files are skipped, not failed); one success ends
    the watch. Until it is decided, the caller holds back the chunks it has explained, so
    that a stopped run flags nothing done and its next run retries them."""

    limit: int = 8
    failures: Counter = field(default_factory=Counter)
    decided: bool = False

    def record(self, reasons: list[str]) -> None:
        """Record the reasons of the items the method failed on, '' for the explained ones."""
        for reason in reasons:
            if self.decided:
                return
            if not reason:
                self.decided = True
                return
            self.failures[reason] += 1
            if sum(self.failures.values()) >= self.limit:
                self.decided = True
                if len(self.failures) == 1:
                    raise SystematicFailure(self.limit, reason)


class SystematicFailure(RuntimeError):
    """The first items of a run all failed for the same reason."""

    def __init__(self, count: int, reason: str) -> None:
        super().__init__(f"stopped: the first {count} items all failed for the same reason: "
                         f"{reason}")
        self.count, self.reason = count, reason
