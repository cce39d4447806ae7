"""Whole datasets: readers, the zarr store, resume, bad data, torchrun, scoring."""

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

import xai_utils as xu
from xai_utils.evaluation import metrics
from xai_utils.runner import RunMismatchError
from xai_utils.runner.datasets import read_source
from xai_utils.runner.samples import BROKEN, write_shapes_voc
from xai_utils.runner.score import box_mask, score_store

REPO = Path(__file__).resolve().parents[2]


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a store, by relative path: bit-for-bit comparison."""
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_shapes_voc(tmp_path_factory.mktemp("voc"), 24, broken=True, modes=True)


def test_store_reads_with_plain_zarr_and_equals_explain(shapes_model, tmp_path):
    out = tmp_path / "maps.zarr"
    summary = xu.explain_dataset("gradcam", shapes_model, "shapes:40", out, batch_size=16,
                                 dtype="float32", progress=False)
    assert (summary.done, summary.skipped, summary.failed) == (40, 0, 0)
    g = zarr.open_group(out, mode="r")
    assert g["maps"].shape == (40, 112, 112) and g["maps"].dtype == np.float32
    assert g["maps"].chunks == (16, 112, 112)
    assert g["done"][:].tolist() == [1, 1, 1]
    assert list(g["file"][:3]) == ["shapes:000000", "shapes:000001", "shapes:000002"]
    run = g.attrs["run"]
    assert (run["method"], run["model"], len(run["weights"])) == ("gradcam", "shapes_vgg", 16)
    assert set(g.attrs["versions"]) == {"xai_utils", "torch", "zarr", "numpy"}
    # the same maps as xu.explain on the same batch
    data = xu.data.shapes.generate(40, seed=0)
    x = xu.preprocess(list(data.images[16:32]), shapes_model)
    expl = xu.explain("gradcam", shapes_model, x)
    np.testing.assert_array_equal(g["maps"][16:32], expl.saliency.numpy())
    np.testing.assert_array_equal(g["target"][16:32], expl.target.numpy())
    np.testing.assert_array_equal(g["predicted"][:], g["target"][:])
    assert g["errors/file"].shape == (0,)


def test_loading_thread_and_loader_workers_give_the_same_store(shapes_model, voc, tmp_path):
    """Without workers the next chunk loads in a thread (`run._one_ahead`); with workers
    in other processes: the store is the same, bit for bit."""
    stores = []
    for workers in (0, 2):
        stores.append(tmp_path / f"w{workers}.zarr")
        xu.explain_dataset("gradcam", shapes_model, voc, stores[-1], batch_size=8,
                           num_workers=workers, progress=False)
    assert store_files(stores[0]) == store_files(stores[1])


def test_bad_files_land_in_the_error_table_only(shapes_model, voc, tmp_path):
    out = tmp_path / "voc.zarr"
    s = xu.explain_dataset("gradcam", shapes_model, voc, out, target="label", batch_size=8,
                           progress=False)
    g = zarr.open_group(out, mode="r")
    errors = {Path(str(f)).name: str(r) for f, r in zip(g["errors/file"][:],
                                                         g["errors/reason"][:], strict=True)}
    assert set(errors) == set(BROKEN)
    assert "truncated" in errors["broken_truncated.png"]
    assert "not an image" in errors["broken_text.jpg"]
    assert "8x8 px" in errors["broken_tiny.png"]
    assert (s.done, s.skipped, s.failed, s.items) == (24, 4, 0, 28)
    status, files = g["status"][:], g["file"][:]
    bad = np.array([Path(str(f)).name in BROKEN for f in files])
    assert (status[bad] == 2).all() and (status[~bad] == 1).all()
    assert sorted(g["errors/index"][:].tolist()) == np.flatnonzero(bad).tolist()
    maps = g["maps"][:]
    assert np.isnan(maps[bad]).all() and np.isfinite(maps[~bad]).all()
    assert (g["target"][:][bad] == -1).all()
    # L, RGBA, P and CMYK files were converted and explained
    assert {"shape_00000.png", "shape_00003.jpg"} <= {Path(str(f)).name for f in files[~bad]}
    np.testing.assert_array_equal(g["target"][:][~bad], g["label"][:][~bad])


def test_items_the_method_fails_on_are_recorded_as_failed(shapes_model, tmp_path):
    """A method that raises on some images of a chunk (the gradient, through a model that
    refuses them with gradients on): the chunk is retried image by image;
    those images get status 3 and the error as their reason, the rest are explained."""
    x = xu.preprocess(list(xu.data.shapes.generate(12, seed=0).images), shapes_model)
    first = x.flatten(1)[:, 0]
    limit = float(first.median())

    class Fragile(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.xai = inner, inner.xai

        def forward(self, x):
            if torch.is_grad_enabled() and (x.flatten(1)[:, 0] > limit).any():
                raise RuntimeError("fragile input")
            return self.inner(x)

    out = tmp_path / "fragile.zarr"
    s = xu.explain_dataset("gradient", Fragile(shapes_model), "shapes:12", out, batch_size=4,
                           progress=False)
    bad = (first > limit).numpy()
    assert 0 < bad.sum() < 12 and (s.done, s.skipped, s.failed) == ((~bad).sum(), 0, bad.sum())
    g = zarr.open_group(out, mode="r")
    np.testing.assert_array_equal(g["status"][:], np.where(bad, 3, 1))
    assert g["errors/index"][:].tolist() == np.flatnonzero(bad).tolist()
    assert all(str(r) == "method failed: RuntimeError: fragile input"
               for r in g["errors/reason"][:])
    maps = g["maps"][:]
    assert np.isnan(maps[bad]).all()
    expected = xu.explain("gradient", shapes_model, x[~bad]).saliency.numpy()
    # retried one by one: the batch's float rounding may differ by one float16 step
    np.testing.assert_allclose(maps[~bad], expected, rtol=2e-3, atol=1e-6)


def test_changed_run_refuses_to_append(shapes_model, tmp_path):
    out = tmp_path / "maps.zarr"
    xu.explain_dataset("gradcam", shapes_model, "shapes:8", out, batch_size=4, progress=False)
    with pytest.raises(RunMismatchError, match="params.*relu.*overwrite"):
        xu.explain_dataset("gradcam", shapes_model, "shapes:8", out, batch_size=4,
                           progress=False, relu=False)
    with pytest.raises(RunMismatchError, match="method"):
        xu.explain_dataset("gradient", shapes_model, "shapes:8", out, batch_size=4,
                           progress=False)
    other = xu.load_model("shapes_vgg", pretrained=False)
    with pytest.raises(RunMismatchError, match="weights"):
        xu.explain_dataset("gradcam", other, "shapes:8", out, batch_size=4, progress=False)
    xu.explain_dataset("gradient", shapes_model, "shapes:8", out, batch_size=4,
                       progress=False, overwrite=True)
    assert zarr.open_group(out, mode="r").attrs["run"]["method"] == "gradient"


def test_unflagged_chunks_are_redone_bit_for_bit(shapes_model, tmp_path):
    full, part = tmp_path / "full.zarr", tmp_path / "part.zarr"
    for out in (full, part):
        xu.explain_dataset("gradcam", shapes_model, "shapes:20", out, batch_size=4,
                           progress=False)
    g = zarr.open_group(part, mode="r+")
    g["done"][1:3] = 0  # as if killed while writing chunk 1, before flagging 2
    g["maps"][4:6] = 0.0  # a half-written chunk
    g.attrs["summary"] = {}
    s = xu.explain_dataset("gradcam", shapes_model, "shapes:20", part, batch_size=4,
                           progress=False)
    assert s.explained_now == 8
    assert store_files(part) == store_files(full)


def _write_images(root: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / name)


def test_every_input_format_is_read(tmp_path, voc, shapes_model):
    _write_images(tmp_path / "flat", ["a.png", "sub/b.jpg", "sub/deeper/c.png"])
    (tmp_path / "flat" / "notes.txt").write_text("ignored")
    src = read_source(tmp_path / "flat")
    assert [i.file for i in src.items] == ["a.png", "sub/b.jpg", "sub/deeper/c.png"]
    assert {i.label for i in src.items} == {-1}
    _write_images(tmp_path / "folders", ["ellipse/1.png", "quadrilateral/2.png", "ellipse/3.png"])
    src = read_source(tmp_path / "folders", ("quadrilateral", "ellipse"))
    assert [(i.file, i.label) for i in src.items] == [
        ("ellipse/1.png", 1), ("ellipse/3.png", 1), ("quadrilateral/2.png", 0)]
    (tmp_path / "list.csv").write_text("file,target\nflat/a.png,3\nflat/sub/b.jpg,ellipse\n")
    src = read_source(tmp_path / "list.csv", ("quadrilateral", "ellipse"))
    assert [(i.file, i.label) for i in src.items] == [("flat/a.png", 3), ("flat/sub/b.jpg", 1)]
    (tmp_path / "list.json").write_text(json.dumps([{"file": "flat/a.png", "target": 2},
                                                    ["flat/sub/b.jpg", 0]]))
    assert [i.label for i in read_source(tmp_path / "list.json").items] == [2, 0]
    coco = {"images": [{"id": 7, "file_name": "flat/a.png", "height": 20, "width": 24}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [{"image_id": 7, "category_id": 2, "bbox": [1, 2, 3, 4]},
                            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 2, 2]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    src = read_source(tmp_path / "coco.json")
    assert [(i.label, i.boxes) for i in src.items] == [(0, [(0, 0, 2, 2)]), (1, [(1, 2, 4, 6)])]
    assert all(i.difficult for i in src.items)  # small boxes with a distractor class
    src = read_source(voc, ("quadrilateral", "ellipse"))
    assert len(src.items) == 28 and all(len(i.boxes) == 1 for i in src.items)
    first = ET_first(voc)
    assert src.items[4].boxes[0] == (first[0] - 1, first[1] - 1, first[2], first[3])
    shapes = read_source("shapes:5:3", ("quadrilateral", "ellipse"))
    data = xu.data.shapes.generate(5, seed=3 * 1_000_003)
    assert [i.label for i in shapes.items] == data.labels.tolist()
    ys, xs = np.nonzero(data.masks[2].numpy())
    assert shapes.items[2].boxes == [(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)]
    dataset = torch.utils.data.TensorDataset(data.images, data.labels)
    s = xu.explain_dataset("gradcam", shapes_model, dataset, tmp_path / "ds.zarr",
                           target="label", batch_size=2, progress=False)
    g = zarr.open_group(tmp_path / "ds.zarr", mode="r")
    assert s.done == 5 and g["target"][:].tolist() == data.labels.tolist()


def ET_first(voc: Path) -> tuple[float, ...]:
    import xml.etree.ElementTree as ET
    box = ET.parse(voc / "Annotations" / "shape_00000.xml").getroot().find("object/bndbox")
    return tuple(float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))


def test_box_mask_and_pointing_score(shapes_model, tmp_path):
    # a 2x upscale (crop_pct 1): box [10, 20) x [4, 8) in the original covers map [20, 40) x
    # [8, 16); map pixel centres are mapped back before the test
    mask = box_mask(np.array([[10.0, 4.0, 20.0, 8.0]]), 56, 56, 112, 1.0)
    expected = torch.zeros(112, 112, dtype=torch.bool)
    expected[8:16, 20:40] = True
    assert torch.equal(mask, expected)
    out = tmp_path / "s.zarr"
    xu.explain_dataset("gradcam", shapes_model, "shapes:12", out, batch_size=4, progress=False)
    scores = score_store(out, ["pointing", "energy"], progress=False)
    g = zarr.open_group(out, mode="r")
    sal = torch.from_numpy(g["maps"][:].astype(np.float32))
    masks = torch.stack([box_mask(g["boxes"][:][g["boxes"][:, 0] == i, 1:], 112, 112, 112, 1.0)
                         for i in range(12)])
    hits = metrics.pointing_game(sal, masks, tolerance=15).float().numpy()
    assert [r["pointing"] for r in scores.rows] == hits.tolist()
    np.testing.assert_allclose([r["energy"] for r in scores.rows],
                               metrics.energy_in_mask(sal, masks).numpy(), rtol=1e-6)
    targets = g["target"][:]  # TorchRay's accuracy: the mean of the per-class hit rates
    per_class = [hits[targets == c].mean() for c in np.unique(targets)]
    assert scores.table[0]["all"] == pytest.approx(np.mean(per_class))


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_command_line_keeps_freed_memory():
    """After `keep_freed_memory`, a freed 8 MB block stays in the process (resident memory
    does not fall back); without it glibc unmaps the block at once."""
    probe = ("import sys, psutil, numpy as np; from xai_utils.runner.cli import keep_freed_memory;"
             "assert keep_freed_memory() if sys.argv[1] == 'keep' else True;"
             "p = psutil.Process(); base = p.memory_info().rss;"
             "a = np.ones(8 << 20, np.uint8); a = None;"
             "print((p.memory_info().rss - base) / 2**20)")
    grown = {mode: float(subprocess.run([sys.executable, "-c", probe, mode], check=True,
                                        capture_output=True, text=True, cwd=REPO).stdout)
             for mode in ("keep", "default")}
    assert grown["keep"] > 6 and grown["default"] < 2, grown


# --- a misconfigured run fails at once and says why --------------------------------------

@pytest.mark.parametrize(("params", "target", "message"), [
    ({"nosuch": 3}, "top", r"gradcam has no parameter 'nosuch'.*layer, relu"),
    ({"rellu": True}, "top", r"Did you mean relu\?"),
    ({"relu": 2}, "top", r"relu=2 should be bool"),
    ({"layer": "nope"}, "top", r"fails on a grey test image.*no layer 'nope'"),
    ({}, 5000, r"class index 5000 is out of range for a model with 2 classes \(0\.\.1\)"),
])
def test_misconfigured_run_raises_before_writing(shapes_model, tmp_path, params, target,
                                                 message):
    from xai_utils.runner.checks import ConfigError

    out = tmp_path / "never.zarr"
    with pytest.raises(ConfigError, match=message):
        xu.explain_dataset("gradcam", shapes_model, "shapes:8", out, target=target,
                           batch_size=4, progress=False, **params)
    assert not out.exists()


def test_values_are_checked_by_the_method_itself(shapes_model, tmp_path):
    """Values out of range come from the method's own check, run once on a grey image
    (one step of an optimisation, one window of occlusion)."""
    from xai_utils.runner.checks import ConfigError, check_run

    for method, params, message in (
            ("extremal_perturbation", {"areas": [0.1, 2.0]}, "areas must be fractions"),
            ("extremal_perturbation", {"steps": 0}, "steps must be an integer >= 1"),
            ("occlusion", {"output": "nope"}, "output must be 'prob' or 'logit'"),
            ("lrp", {"composite": "nope"}, "unknown LRP composite"),
            ("meaningful_perturbation", {"l1": "x"}, "l1='x' should be float"),
            ("meaningful_perturbation", {"nosuch": 1}, "no parameter 'nosuch'.*tv_kind")):
        with pytest.raises(ConfigError, match=message):
            check_run(method, shapes_model, params, "top", "float16", 4, 0, 8)
    for method in xu.methods():  # every method's defaults pass
        check_run(method, shapes_model, {}, "top", "float16", 4, 0, 8)


def test_command_line_exits_2_with_one_line(tmp_path, capsys):
    from xai_utils.runner.cli import main

    out = tmp_path / "never.zarr"
    base = ["explain", "--method", "gradcam", "--model", "shapes_vgg", "--data", "shapes:8",
            "--out", str(out), "--no-progress", "--device", "cpu"]
    for extra, message in ((["--target", "5000"], "class index 5000 is out of range"),
                           (["--param", "nosuch=3"], "gradcam has no parameter 'nosuch'"),
                           (["--method", "gradcan"], "Did you mean gradcam"),
                           (["--batch-size", "0"], "batch_size must be an integer >= 1")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
        assert not out.exists()


def test_console_lists_failures_by_reason_without_progress(voc, tmp_path, capsys):
    from xai_utils.runner.cli import main

    out = tmp_path / "voc.zarr"
    code = main(["explain", "--method", "gradcam", "--model", "shapes_vgg", "--data",
                 str(voc), "--out", str(out), "--no-progress", "--workers", "0",
                 "--device", "cpu"])
    err = capsys.readouterr().err
    g = zarr.open_group(out, mode="r")
    files = [str(f) for f in g["errors/file"][:]]
    keys = [str(r).replace(Path(f).name, "<file>")
            for r, f in zip(g["errors/reason"][:], files, strict=True)]
    assert code == 0 and len(set(keys)) < len(keys)  # skipped, not failed; some share a reason
    for key in set(keys):
        first = files[keys.index(key)]
        assert f"  {keys.count(key)} x {key} (first: {first})" in err, err


class Toggle(torch.nn.Module):
    """The shapes model, refusing images with gradients on while `broken` (same weights)."""

    def __init__(self, inner, broken: bool):
        super().__init__()
        self.inner, self.xai, self.broken, self.calls = inner, inner.xai, broken, 0

    def forward(self, x):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.broken:
                raise RuntimeError("out of memory (simulated)")
        return self.inner(x)


def test_systematic_failure_stops_early_and_resumes(shapes_model, tmp_path):
    """The first 8 items all fail for one reason: the run stops there (the check's call on a
    grey image, which a RuntimeError does not stop, one call for the chunk, then 8 items one
    by one, not 40), flags nothing done, and the same call with the cause gone completes the
    store."""
    from xai_utils.runner.checks import SystematicFailure

    out, model = tmp_path / "stop.zarr", Toggle(shapes_model, broken=True)
    with pytest.raises(SystematicFailure, match="first 8 items all failed.*out of memory"):
        xu.explain_dataset("gradient", model, "shapes:40", out, batch_size=16,
                           progress=False)
    assert model.calls == 1 + 1 + 8
    assert zarr.open_group(out, mode="r")["done"][:].sum() == 0
    model.broken = False
    s = xu.explain_dataset("gradient", model, "shapes:40", out, batch_size=16, progress=False)
    assert (s.done, s.failed, s.explained_now) == (40, 0, 40)


def test_failures_with_successes_do_not_stop(shapes_model, tmp_path):
    """A method failing on some items only: the rest is explained, the failures grouped."""
    model = Toggle(shapes_model, broken=False)
    calls = {"n": 0}

    def forward(x, inner=model.forward):
        calls["n"] += 1
        if torch.is_grad_enabled() and calls["n"] % 3 == 0:
            raise RuntimeError("every third call")
        return inner(x)
    model.forward = forward
    s = xu.explain_dataset("gradient", model, "shapes:12", tmp_path / "some.zarr",
                           batch_size=4, progress=False, max_failures=2)
    assert s.failed > 0 and s.done > 0 and s.done + s.failed == 12
    assert s.problems[0][:2] == ("method failed: RuntimeError: every third call", s.failed)
