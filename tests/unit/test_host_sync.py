"""No host synchronisation inside loops: an optimisation, an occlusion sweep or a metric
curve reads values back to the host a fixed number of times per call, whatever its number of
steps, windows or points. On a GPU every such read stalls the device until the queue is
empty; counted here on the CPU through the calls that would synchronise."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import xai_utils as xu
from xai_utils.data import shapes
from xai_utils.evaluation import metrics

READS = {"item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__float__", "__int__",
         "__index__", "__format__"}


OPTIM = os.path.join("torch", "optim", "")


class HostReads(TorchFunctionMode):
    """Counts the tensor calls that copy a value to the host (and so wait for the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.count: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        # torch.optim keeps its step counters on the host by design (reading them waits for
        # nothing on the device)
        if OPTIM in sys._getframe(1).f_code.co_filename:
            return func(*args, **(kwargs or {}))
        moved = (*args[1:], *(kwargs or {}).values())
        to_cpu = name == "to" and any(str(a) == "cpu" for a in moved)
        if name in READS or to_cpu:
            self.count[name] = self.count.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def reads(fn) -> dict[str, int]:
    with HostReads() as mode:
        fn()
    return mode.count


@pytest.fixture(scope="module")
def task():
    torch.manual_seed(0)
    data = shapes.generate(2, seed=0)
    return xu.load_model("shapes_vgg"), data.images, data.labels


ITERATIVE = [n for n in xu.methods() if xu.method_info(n).iterative]


@pytest.mark.parametrize("name", ITERATIVE)
def test_optimisation_reads_the_host_a_fixed_number_of_times(task, name):
    model, x, t = task
    extra = {"areas": [0.1]} if name == "extremal_perturbation" else {}
    few, many = (reads(lambda s=s: xu.explain(name, model, x, t, steps=s, progress=False, **extra))
                 for s in (3, 9))
    assert few == many, f"{name}: host reads grow with the steps: {few} at 3, {many} at 9"


def test_occlusion_reads_the_host_a_fixed_number_of_times(task):
    model, x, t = task
    coarse, fine = (reads(lambda s=s: xu.explain("occlusion", model, x, t, window=28, stride=s,
                                                 batch_size=4))
                    for s in (28, 7))
    assert coarse == fine, f"host reads grow with the windows: {coarse} against {fine}"


@pytest.mark.parametrize("metric", [metrics.deletion_auc, metrics.insertion_auc])
def test_metric_curves_read_the_host_a_fixed_number_of_times(task, metric):
    model, x, t = task
    sal = xu.explain("gradient", model, x, t).saliency
    short, long = (reads(lambda s=s: metric(model, x, sal, t, steps=s, batch_size=4))
                   for s in (4, 16))
    assert short == long, f"host reads grow with the curve's points: {short} against {long}"


def test_the_counter_sees_host_reads():
    x = torch.ones(3)
    counted = reads(lambda: (x.sum().item(), bool(x[0] > 0), x.tolist(), float(x[1])))
    assert counted == {"item": 1, "__bool__": 1, "tolist": 1, "__float__": 1}
