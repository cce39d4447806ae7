"""The contract every registered saliency method gets for free (parametrised over
`xu.methods()` x four models), so a new method is checked the moment it is registered:

1. a finite B x H x W map, on the input's device and dtype;
2. a batch of 2 gives the maps of its images explained one at a time (same seed);
3. the same seed (deterministic methods: a repeated call) gives the same map, bit for bit;
4. the input tensor is left untouched, bit for bit;
5. the model comes back as it was: no forward / pre-forward / backward hook anywhere (nor a
   global module hook or a tensor hook on a parameter), every parameter and buffer bit for
   bit (the same Parameter objects, no `.grad` left), `requires_grad` and `training` flags,
   the module tree (names and types: BatchNorm merging swaps modules for a while) and the
   modules' plain attributes (`inplace`, ...), and autograd's global grad mode;
6. 4-5 also hold when the method fails midway (a hook on the classifier raises `Boom` on
   its 2nd call, or its 1st for one-forward methods) and when one module is in train mode
   (the method runs or refuses with a clear error; the mixed mode is kept either way).

Models: a tiny conv net in float64 (so dtype handling is tested off float32),
`shapes_vgg`, a random-weight ResNet18 and EfficientNet-Lite0, all at small inputs, with 3
steps for iterative methods and a 2 x 2 grid of occlusion windows. Before every call some
parameters get `requires_grad=False` (a mix), so restoring the flags is really tested. The
session models (`shapes_model`, `effnet`) are deep-copied, never modified. The clean calls
of each (method, model) are made once and shared by properties 1-5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.modules.module as torch_module
from torch import nn

import xai_utils as xu
from xai_utils.core.hooks import registered_hooks
from xai_utils.core.inputs import ModelInfo, input_spec
from xai_utils.data.shapes import generate
from xai_utils.evaluation.harness import method_settings
from xai_utils.methods.cam import gap_linear_head

STEPS = 3
SEED = 7
MODELS = ("tiny", "shapes_vgg", "resnet18", "efficientnet_lite0")
SIDE = {"tiny": 24, "shapes_vgg": 112, "resnet18": 64, "efficientnet_lite0": 64}  # px
FIXTURE = {"tiny": "contract_tiny", "shapes_vgg": "shapes_model",
           "resnet18": "contract_resnet18", "efficientnet_lite0": "effnet"}
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks",
                "_global_backward_hooks", "_global_backward_pre_hooks")


class Boom(Exception):
    """Injected into a forward pass to make a method fail midway."""


class TinyNet(nn.Module):
    """Conv-ReLU-Conv-ReLU, global average pooling, one linear layer: every method applies
    (CAM finds `pool` and `fc`). The first ReLU is in place (LRP makes it out-of-place for
    a while, and must put the flag back)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for this module: these calls are many and tiny, and on a shared
    CPU two threads make them 5-20x slower (thread hand-offs); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def contract_tiny():
    torch.manual_seed(0)
    model = TinyNet().double().eval()
    model.xai = ModelInfo("tiny", (0.0,) * 3, (1.0,) * 3, 24, 1.0, "bilinear", ("a", "b", "c"))
    return model


@pytest.fixture(scope="module")
def contract_resnet18():
    torch.manual_seed(0)
    return xu.load_model("resnet18", pretrained=False, device_="cpu")


def _classifier(model: nn.Module) -> nn.Module:
    """The last linear layer: where `Boom` is injected (late, after the method's setup)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _fresh(request, model_name: str) -> nn.Module:
    """A private copy of the model, with a mix of requires_grad flags and no gradients."""
    model = copy.deepcopy(request.getfixturevalue(FIXTURE[model_name]))
    for i, p in enumerate(model.parameters()):
        p.grad = None
        p.requires_grad_(i % 3 != 1)
    flags = [p.requires_grad for p in model.parameters()]
    assert any(flags) and not all(flags)
    return model


def _inputs(model: nn.Module, model_name: str) -> tuple[torch.Tensor, list[int]]:
    """Two images in the model's input space (shapes_vgg: one shape of each class; the
    others: random pixels, normalised) and two different target classes (image 0: its top
    class; image 1: its top class, or its second if that is taken), so a method that mixes
    up the images or targets of a batch shows, and no map is trivially zero."""
    dtype = next(model.parameters()).dtype
    if model_name == "shapes_vgg":
        x = generate(2, seed=1).images.to(dtype)
    else:
        side = SIDE[model_name]
        pixels = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(3),
                            dtype=dtype)
        x = input_spec(model, dtype=dtype).normalize(pixels).contiguous()
    with torch.no_grad():
        top = model(x).topk(2, dim=1).indices.tolist()
    first = top[0][0]
    second = top[1][0] if top[1][0] != first else top[1][1]
    return x, [first, second]


def _params(method: str, model: nn.Module, model_name: str) -> dict:
    params = dict(method_settings(model, steps=STEPS)[method])
    info = xu.method_info(method)
    if method == "occlusion":
        side = SIDE[model_name]
        params.update(window=side // 2, stride=side // 2)
    elif info.probe:  # the budget (masks, samples, path points) cut: the contract holds for any
        params.update(info.probe(SIDE[model_name]))
    if xu.method_info(method).stochastic:
        params["seed"] = SEED
    return params


def _unmet(method: str, model: nn.Module) -> list[str]:
    """The method's documented requirements that the model does not meet."""
    unmet = []
    for req in xu.method_info(method).requires:
        if req == "gap_linear_head":
            try:
                gap_linear_head(model)
            except ValueError:
                unmet.append(req)
        elif req == "input_bounds" and not isinstance(getattr(model, "xai", None), ModelInfo):
            unmet.append(req)
    return unmet


# ---------------------------------------------------------------- model state snapshots

SIMPLE = (bool, int, float, str, type(None))


def _attrs(module: nn.Module) -> dict:
    """A module's plain public attributes (training, inplace, kernel_size, ...)."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and (
        isinstance(v, SIMPLE) or (isinstance(v, tuple) and all(isinstance(e, SIMPLE) for e in v)))}


def _snapshot(model: nn.Module, x: torch.Tensor) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "params": list(model.parameters()),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "structure": [(n, type(m)) for n, m in model.named_modules()],
        "attrs": {n: _attrs(m) for n, m in model.named_modules()},
        "grad_enabled": torch.is_grad_enabled(),
        "x": x.clone(),
    }


def _hook_problems(model: nn.Module) -> list[str]:
    problems = []
    if registered_hooks(model):
        problems.append(f"registered_hooks(model) = {registered_hooks(model)}")
    for name, m in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                     "_backward_pre_hooks"):
            if len(getattr(m, kind, {}) or {}):
                problems.append(f"{kind} left on {name or 'model'!r}")
    for name, p in model.named_parameters():
        for kind in ("_backward_hooks", "_post_accumulate_grad_hooks"):
            if getattr(p, kind, None):
                problems.append(f"tensor hook ({kind}) left on parameter {name!r}")
    for kind in GLOBAL_HOOKS:
        if len(getattr(torch_module, kind, {})):
            problems.append(f"global module hook left: {kind}")
    return problems


def _state_problems(model: nn.Module, before: dict, skip_buffers_of: str | None = None
                    ) -> list[str]:
    """Everything in the model that differs from `before` (empty when restored)."""
    problems = []
    structure = [(n, type(m)) for n, m in model.named_modules()]
    if structure != before["structure"]:
        changed = [f"{a} -> {b}" for a, b in zip(before["structure"], structure, strict=False)
                   if a != b][:3]
        problems.append(f"module tree changed ({len(before['structure'])} -> "
                        f"{len(structure)} modules): {changed}")
    state = model.state_dict(keep_vars=True)
    if list(state) != list(before["state"]):
        problems.append("state_dict keys changed")
    for key, old in before["state"].items():
        if skip_buffers_of is not None and key.startswith(skip_buffers_of + ".") \
                and key not in dict(model.named_parameters()):
            continue  # running statistics of the module the test put in train mode
        new = state.get(key)
        if new is None or new.dtype != old.dtype or not torch.equal(new.detach(), old):
            problems.append(f"tensor {key!r} changed")
    params = list(model.parameters())
    if len(params) != len(before["params"]) or any(
            a is not b for a, b in zip(params, before["params"], strict=False)):
        problems.append("parameter objects replaced")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    if flags != before["requires_grad"]:
        bad = [n for n in flags if flags[n] != before["requires_grad"].get(n)][:3]
        problems.append(f"requires_grad flags not restored, e.g. {bad}")
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    if grads:
        problems.append(f"parameter gradients left, e.g. {grads[:3]}")
    training = {n: m.training for n, m in model.named_modules()}
    if training != before["training"]:
        bad = [n for n in training if training[n] != before["training"].get(n)][:3]
        problems.append(f"training flags not restored, e.g. {bad or 'module set changed'}")
    attrs = {n: _attrs(m) for n, m in model.named_modules()}
    if attrs != before["attrs"]:
        bad = [n for n in attrs if attrs[n] != before["attrs"].get(n)][:3]
        problems.append(f"module attributes changed, e.g. {bad}")
    if torch.is_grad_enabled() != before["grad_enabled"]:
        problems.append(f"grad mode left at {torch.is_grad_enabled()}")
    return problems + _hook_problems(model)


def _check(problems: list[str]) -> None:
    if problems:
        more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
        pytest.fail("; ".join(problems[:8]) + more, pytrace=False)


def _input_problems(x: torch.Tensor, before: dict) -> list[str]:
    same = x.dtype == before["x"].dtype and x.shape == before["x"].shape and torch.equal(
        x, before["x"])
    return [] if same else ["the input tensor was modified"]


# ---------------------------------------------------------------- clean runs, cached

@dataclass
class CleanRun:
    """The clean calls of one (method, model): the batch of 2, each image alone, a repeat
    of the first image alone; and what each call left changed."""

    x: torch.Tensor
    refusal: str | None = None
    batch: torch.Tensor | None = None
    singles: list = field(default_factory=list)
    repeat: torch.Tensor | None = None
    input_problems: list = field(default_factory=list)
    model_problems: list = field(default_factory=list)


_RUNS: dict[tuple[str, str], CleanRun | BaseException] = {}


def _clean_run(request, method: str, model_name: str) -> CleanRun:
    key = (method, model_name)
    if key not in _RUNS:
        try:
            _RUNS[key] = _compute_clean_run(request, method, model_name)
        except BaseException as exc:  # noqa: BLE001 - re-raised by every property test
            _RUNS[key] = exc
    run = _RUNS[key]
    if isinstance(run, BaseException):
        raise run
    return run


def _compute_clean_run(request, method: str, model_name: str) -> CleanRun:
    model = _fresh(request, model_name)
    x, targets = _inputs(model, model_name)
    params = _params(method, model, model_name)
    run = CleanRun(x=x.clone())
    unmet = _unmet(method, model)

    def call(label, inp, target):
        before = _snapshot(model, inp)
        try:
            return xu.explain(method, model, inp, target=target, **params).saliency
        except ValueError as exc:
            if not unmet:
                raise
            run.refusal = f"{method} refuses {model_name} (unmet {unmet}): {exc}"
            return None
        finally:
            run.input_problems += [f"{label}: {p}" for p in _input_problems(inp, before)]
            run.model_problems += [f"{label}: {p}" for p in _state_problems(model, before)]

    run.batch = call("batch of 2", x, targets)
    if run.refusal is None:
        run.singles = [call(f"image {i} alone", x[i:i + 1].clone(), targets[i:i + 1])
                       for i in range(len(x))]
        run.repeat = call("image 0 again", x[:1].clone(), targets[:1])
    return run


def _maps(run: CleanRun) -> CleanRun:
    if run.refusal is not None:
        pytest.skip(f"documented refusal: {run.refusal}")
    return run


# ids read [method-model]
METHODS = pytest.mark.parametrize("method", xu.methods())
CASES = pytest.mark.parametrize("model_name", MODELS)


# ---------------------------------------------------------------- properties 1-5

@CASES
@METHODS
def test_finite_map_on_input_device_and_dtype(request, method, model_name):
    run = _maps(_clean_run(request, method, model_name))
    b, _, h, w = run.x.shape
    for sal, n in [(run.batch, b)] + [(s, 1) for s in run.singles]:
        assert isinstance(sal, torch.Tensor)
        assert sal.shape == (n, h, w), f"saliency shape {tuple(sal.shape)}, want {(n, h, w)}"
        assert sal.device == run.x.device and sal.dtype == run.x.dtype, (sal.device, sal.dtype)
        assert torch.isfinite(sal).all(), "saliency has NaN or inf"


@CASES
@METHODS
def test_batch_equals_images_one_at_a_time(request, method, model_name):
    run = _maps(_clean_run(request, method, model_name))
    singles = torch.cat(run.singles)
    assert (singles.flatten(1).abs().amax(1) > 0).all(), \
        "a map is all zero, so the comparison would be vacuous: pick other targets/inputs"
    # Float order only: 1e-4 of the map's largest value (float64: 1e-9). Iterative
    # methods get 1e-3 in float32: Adam's step g / (|g| + eps) turns the rounding of a
    # near-zero gradient into ~1e-4 relative differences after a few steps (measured up to
    # 8.6e-5, meaningful_perturbation on resnet18), while images coupled by a batch differ
    # by O(1).
    if singles.dtype == torch.float64:
        rtol = atol = 1e-9
    else:
        rtol, atol = 1e-4, 1e-3 if xu.method_info(method).iterative else 1e-4
    scale = float(singles.abs().max())
    torch.testing.assert_close(run.batch, singles, rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{method} couples the images of a batch: {m}")


@CASES
@METHODS
def test_same_seed_same_map(request, method, model_name):
    run = _maps(_clean_run(request, method, model_name))
    assert torch.equal(run.repeat, run.singles[0]), (
        f"{method}: a repeated call with the same seed gives another map (max difference "
        f"{float((run.repeat - run.singles[0]).abs().max()):.3g})")


@CASES
@METHODS
def test_input_not_modified(request, method, model_name):
    run = _clean_run(request, method, model_name)
    _check(run.input_problems)


@CASES
@METHODS
def test_model_restored_after_success(request, method, model_name):
    run = _clean_run(request, method, model_name)
    _check(run.model_problems)


# ---------------------------------------------------------------- property 6

@CASES
@METHODS
def test_model_and_input_restored_after_exception_midway(request, method, model_name):
    model = _fresh(request, model_name)
    x, targets = _inputs(model, model_name)
    x, target = x[:1].clone(), targets[:1]
    params = _params(method, model, model_name)
    layer = _classifier(model)
    before = _snapshot(model, x)
    raised_at = None
    for fail_on in (2, 1):  # the 2nd forward when the method makes several, else the 1st
        calls = 0

        def boom(_module, _inputs, _output, fail_on=fail_on):
            nonlocal calls
            calls += 1
            if calls == fail_on:
                raise Boom(f"injected on forward call {calls}")

        handle = layer.register_forward_hook(boom)
        try:
            xu.explain(method, model, x, target=target, **params)
        except Boom:
            raised_at = fail_on
        except ValueError:
            if not _unmet(method, model):
                raise
            pytest.skip(f"documented refusal of {method} for {model_name}")
        finally:
            handle.remove()
        when = f"after Boom on forward call {fail_on}" if raised_at else "after a full run"
        _check([f"{when}: {p}" for p in _input_problems(x, before)
                + _state_problems(model, before)])
        if raised_at is not None:
            break
        assert calls == 1, f"{method} called the classifier {calls} times without Boom"
    assert raised_at is not None, "Boom did not propagate"


@CASES
@METHODS
def test_mixed_train_mode_kept(request, method, model_name):
    """One module in train mode (the last BatchNorm, else the classifier): the method runs or
    refuses with a clear error, and the mixed mode comes back either way. That BatchNorm's
    running statistics may move (the user asked for train mode), nothing else may."""
    model = _fresh(request, model_name)
    x, targets = _inputs(model, model_name)
    x, target = x[:1].clone(), targets[:1]
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    name = norms[-1] if norms else [n for n, m in model.named_modules()
                                    if m is _classifier(model)][0]
    model.get_submodule(name).train()
    params = _params(method, model, model_name)
    before = _snapshot(model, x)
    assert any(before["training"].values()) and not all(before["training"].values())
    try:
        sal = xu.explain(method, model, x, target=target, **params).saliency
        assert torch.isfinite(sal).all() and sal.shape == x[:, 0].shape
    except ValueError as exc:
        assert "train" in str(exc) or _unmet(method, model), f"unclear refusal: {exc}"
    _check(_input_problems(x, before) + _state_problems(
        model, before, skip_buffers_of=name if norms else None))
