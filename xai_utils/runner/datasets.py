"""Whole datasets as a list of items, read through a `torch.utils.data.Dataset`.

`read_source(data)` turns any accepted input into a `Source`: the ordered items (file, label,
ground-truth boxes) and how to load each one. Accepted inputs: a folder of images (recursive),
an ImageFolder layout (labels from the sub-folder names), a CSV or JSON list of files with
targets, Pascal VOC XML annotations, a COCO JSON file, `shapes:N[:SEED]` (the generated shapes
task, boxes from its masks), or any `torch.utils.data.Dataset` yielding images or
(image, label) pairs. Boxes are kept in original pixel coordinates, as [x0, x1) x [y0, y1).
"""

from __future__ import annotations

import csv
import json
import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from xai_utils.data import shapes
from xai_utils.data.images import ImageLoadError, _resize_and_crop, load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm", ".jp2"}
SHAPES_BLOCK = 256  # shapes:N is generated in blocks of this many images, one seed per block


@dataclass
class Item:
    """One explanation to compute: an image, its label (-1: none) and its boxes."""

    file: str
    label: int = -1
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    difficult: bool = False  # in the pointing game's difficult subset
    skip_pointing: bool = False  # every box of its class is marked difficult (VOC)


@dataclass
class Source:
    """The ordered items of a dataset and what is needed to load them."""

    spec: str  # the input as given (a path, shapes:N or the Dataset's class name)
    items: list[Item]
    root: Path | None = None  # files are relative to it
    dataset: Dataset | None = None  # items are its indices
    shapes_seed: int = 0

    def load(self, index: int) -> np.ndarray:
        """The RGB uint8 image of item `index` (raises for bad data)."""
        if self.dataset is not None:
            sample = self.dataset[index]
            image = sample[0] if isinstance(sample, (tuple, list)) else sample
            return load_image(image)
        if self.spec.startswith("shapes:"):
            block, offset = divmod(index, SHAPES_BLOCK)
            batch = _shapes_block(self, block)
            return load_image(batch.images[offset])
        return load_image(self.root / self.items[index].file)


def _shapes_block(source: Source, block: int) -> shapes.ShapesBatch:
    n = min(SHAPES_BLOCK, len(source.items) - block * SHAPES_BLOCK)
    cache = source.__dict__.setdefault("_cache", {})
    if block not in cache:
        cache.clear()
        cache[block] = shapes.generate(n, seed=source.shapes_seed * 1_000_003 + block)
    return cache[block]


def _label_indices(names: list[str], class_names: tuple[str, ...]) -> dict[str, int]:
    """Class name -> index: the model's own index when it knows every name, else sorted order."""
    if names and all(n in class_names for n in names):
        return {n: class_names.index(n) for n in names}
    return {n: i for i, n in enumerate(sorted(set(names)))}


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and p.is_file() and not any(part.startswith(".") for part in p.parts))


def _folder(root: Path, class_names: tuple[str, ...]) -> Source:
    top_images = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = _images_under(root)
    if not files:
        raise ValueError(f"no image files under {root}")
    if top_images or not subdirs:  # a plain folder: no labels
        return Source(str(root), [Item(p.relative_to(root).as_posix()) for p in files], root)
    index = _label_indices([d.name for d in subdirs], class_names)  # ImageFolder layout
    items = [Item(p.relative_to(root).as_posix(), index[p.relative_to(root).parts[0]])
             for p in files if len(p.relative_to(root).parts) > 1]
    return Source(str(root), items, root)


def _target_value(value, index: dict[str, int]) -> int:
    if value is None or str(value).strip() == "":
        return -1
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else index[text]


def _listing(path: Path, rows: list[tuple[str, object]], class_names) -> Source:
    names = [str(t).strip() for _, t in rows
             if t is not None and not str(t).strip().lstrip("-").isdigit() and str(t).strip()]
    index = _label_indices(names, class_names)
    items = [Item(str(f), _target_value(t, index)) for f, t in rows]
    return Source(str(path), items, path.parent)


def _csv(path: Path, class_names) -> Source:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise ValueError(f"{path}: a CSV list needs a header with a 'file' column "
                             "(and optionally 'target')")
        key = "target" if "target" in reader.fieldnames else "label"
        rows = [(r["file"], r.get(key)) for r in reader]
    return _listing(path, rows, class_names)


def _json(path: Path, class_names) -> Source:
    content = json.loads(path.read_text())
    if isinstance(content, dict) and {"images", "annotations", "categories"} <= content.keys():
        return _coco(path, content, class_names)
    if not isinstance(content, list):
        raise ValueError(f"{path}: expected a list of files (or COCO JSON)")
    rows = [(r["file"], r.get("target", r.get("label"))) if isinstance(r, dict)
            else (r[0], r[1] if len(r) > 1 else None) if isinstance(r, list) else (r, None)
            for r in content]
    return _listing(path, rows, class_names)


def _pairs(root: Path, spec: str, images: list[tuple[str, int, int]],
           objects: list[list[tuple[str, tuple, bool]]], class_names) -> Source:
    """One item per (image, class present), as in the pointing game of TorchRay.

    `images`: (file, height, width); `objects[i]`: (class name, box, PASCAL-difficult flag).
    Difficult subset (Zhang et al. 2016): the class's boxes cover less than a quarter of the
    image and another class is present.
    """
    index = _label_indices(sorted({o[0] for objs in objects for o in objs}), class_names)
    items = []
    for (file, h, w), objs in zip(images, objects, strict=True):
        for name in sorted({o[0] for o in objs}, key=index.get):
            mine = [o for o in objs if o[0] == name]
            boxes = [o[1] for o in mine]
            covered = np.zeros((max(h, 1), max(w, 1)), dtype=bool)
            for x0, y0, x1, y1 in boxes:
                covered[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            others = {o[0] for o in objs} - {name}
            items.append(Item(file, index[name], boxes,
                              difficult=bool(others) and covered.mean() < 0.25,
                              skip_pointing=all(o[2] for o in mine)))
    return Source(spec, items, root)


def _voc(root: Path, class_names) -> Source:
    xml_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    image_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else xml_dir
    prefix = image_dir.relative_to(root).as_posix()
    prefix = "" if prefix == "." else prefix + "/"
    names = sorted(e.name for e in os.scandir(xml_dir)
                   if e.name.endswith(".xml") and e.is_file())  # strings: cheaper than Paths
    images, objects = [], []
    for name in names:
        ann = ET.parse(os.path.join(xml_dir, name)).getroot()
        size = ann.find("size")
        h, w = (0, 0) if size is None else (int(size.findtext("height")),
                                            int(size.findtext("width")))
        objs = []
        for obj in ann.iter("object"):
            b = obj.find("bndbox")
            x0, y0, x1, y1 = (float(b.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objs.append((obj.findtext("name").strip(), (x0 - 1, y0 - 1, x1, y1),
                         obj.findtext("difficult", "0").strip() == "1"))
        images.append((prefix + ann.findtext("filename").strip(), h, w))
        objects.append(objs)
    return _pairs(root, str(root), images, objects, class_names)


def _coco(path: Path, content: dict, class_names) -> Source:
    names = {c["id"]: c["name"] for c in content["categories"]}
    by_image: dict[int, list] = {}
    for a in content["annotations"]:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append((names[a["category_id"]],
                                                       (x, y, x + w, y + h), False))
    images = sorted(content["images"], key=lambda im: im["id"])
    return _pairs(path.parent, str(path),
                  [(im["file_name"], im.get("height", 0), im.get("width", 0)) for im in images],
                  [by_image.get(im["id"], []) for im in images], class_names)


def _shapes(spec: str, class_names) -> Source:
    parts = spec.split(":")
    n, seed = int(parts[1]), int(parts[2]) if len(parts) > 2 else 0
    source = Source(spec, [], shapes_seed=seed)
    source.items = [Item(f"shapes:{i:06d}") for i in range(n)]
    index = _label_indices(list(shapes.CLASSES), class_names)
    for block in range(0, (n + SHAPES_BLOCK - 1) // SHAPES_BLOCK):
        batch = _shapes_block(source, block)
        for j, (label, mask) in enumerate(zip(batch.labels, batch.masks, strict=True)):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            item = source.items[block * SHAPES_BLOCK + j]
            item.label = index[shapes.CLASSES[int(label)]]
            if len(xs):
                item.boxes = [(xs.min().item(), ys.min().item(),
                               xs.max().item() + 1, ys.max().item() + 1)]
    return source


def read_source(data, class_names: tuple[str, ...] = ()) -> Source:
    """The `Source` of `data` (see the module docstring); labels given as class names map to
    `class_names` indices when all are known, else to their sorted order."""
    if isinstance(data, Source):
        return data
    if isinstance(data, Dataset):
        items = []
        for i in range(len(data)):  # type: ignore[arg-type]
            sample = data[i]
            label = sample[1] if isinstance(sample, (tuple, list)) and len(sample) > 1 else -1
            items.append(Item(f"item:{i:06d}", int(label)))
        return Source(type(data).__name__, items, dataset=data)
    spec = str(data)
    if spec.startswith("shapes:"):
        return _shapes(spec, class_names)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    if path.is_dir():
        if (path / "Annotations").is_dir() or any(path.glob("*.xml")):
            return _voc(path, class_names)
        return _folder(path, class_names)
    if path.suffix.lower() == ".csv":
        return _csv(path, class_names)
    if path.suffix.lower() == ".json":
        return _json(path, class_names)
    raise ValueError(f"cannot read a dataset from {path}: expected a folder, a .csv or .json "
                     "list, VOC annotations, COCO JSON or shapes:N")


class ItemDataset(Dataset):
    """Items of a `Source`, loaded and resized for a model: each sample is a dict with
    `pixels` (S x S x 3 uint8), `size` (original h, w), `reason` ('' when fine); batch them
    with `collate_items`."""

    def __init__(self, source: Source, size: int, crop_pct: float, interpolation: str) -> None:
        self.source, self.size = source, size
        self.crop_pct, self.interpolation = crop_pct, interpolation

    def __len__(self) -> int:
        return len(self.source.items)

    def __getitem__(self, index: int) -> dict:
        try:
            with warnings.catch_warnings():  # modes are converted; not worth a warning each
                warnings.simplefilter("ignore")
                image = self.source.load(index)
            h, w = image.shape[:2]
            crop = _resize_and_crop(image, self.size, self.crop_pct, self.interpolation)
            pixels = torch.from_numpy(np.array(crop))
            reason = ""
        except (ImageLoadError, OSError, ValueError) as err:
            h = w = 0
            pixels = torch.zeros(self.size, self.size, 3, dtype=torch.uint8)
            reason = f"{type(err).__name__}: {err}"
        return {"pixels": pixels, "size": (h, w), "reason": reason, "index": index}


def collate_items(samples: list[dict]) -> dict:
    """A batch of `ItemDataset` samples: pixels stacked (B x S x S x 3 uint8 tensor), `size`
    and `index` as NumPy arrays, `reason` as a list (lighter than the default collation)."""
    return {"pixels": torch.stack([s["pixels"] for s in samples]),
            "size": np.array([s["size"] for s in samples], dtype=np.int32).reshape(-1, 2),
            "reason": [s["reason"] for s in samples],
            "index": np.array([s["index"] for s in samples], dtype=np.int64)}
