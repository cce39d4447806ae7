"""The shapes task written to disk as a Pascal VOC folder (JPEGImages/ + Annotations/), with
optional broken files and unusual image modes: the test set of the dataset runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from xai_utils.data import shapes

# name -> what is wrong with it (the runner must skip these into its error table)
BROKEN = {"broken_truncated.png": "truncated", "broken_text.jpg": "not an image",
          "broken_empty.png": "empty file", "broken_tiny.png": "8 x 8 px"}
# converted by the runner, not errors
MODES = ("L", "RGBA", "P", "CMYK")


def _xml(file: str, h: int, w: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
        f"<ymin>{y0 + 1}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in objects)
    return (f"<annotation><filename>{file}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>\n")


def write_shapes_voc(folder: str | Path, n: int, seed: int = 0, broken: bool = False,
                     modes: bool = False, size: int = shapes.IMAGE_SIZE) -> Path:
    """Write `n` shapes images (PNG) with VOC boxes of their masks into `folder`; `broken`
    adds the files of `BROKEN` (with annotations), `modes` re-saves four images in the
    modes of `MODES`. Returns the folder."""
    folder = Path(folder)
    images, notes = folder / "JPEGImages", folder / "Annotations"
    images.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 256):
        batch = shapes.generate(min(256, n - start), seed=seed * 1_000_003 + start, size=size)
        pixels = (batch.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for j, (img, label, mask) in enumerate(zip(pixels, batch.labels, batch.masks,
                                                   strict=True)):
            name = f"shape_{start + j:05d}.png"
            Image.fromarray(img).save(images / name)
            ys, xs = np.nonzero(mask.numpy())
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            (notes / name.replace(".png", ".xml")).write_text(
                _xml(name, size, size, [(shapes.CLASSES[int(label)], box)]))
    if modes:
        for mode, j in zip(MODES, range(min(4, n)), strict=False):
            path = images / f"shape_{j:05d}.png"
            img = Image.open(path).convert(mode)
            if mode == "CMYK":
                path.unlink()
                path = path.with_suffix(".jpg")
                img.save(path, quality=95)
                xml = notes / f"shape_{j:05d}.xml"
                xml.write_text(xml.read_text().replace(".png<", ".jpg<"))
            else:
                img.save(path)
    if broken:
        good = (images / "shape_00000.png").read_bytes() if n else b""
        (images / "broken_truncated.png").write_bytes(good[: len(good) // 3])
        (images / "broken_text.jpg").write_text("this is not an image\n")
        (images / "broken_empty.png").write_bytes(b"")
        Image.new("RGB", (8, 8), (200, 10, 10)).save(images / "broken_tiny.png")
        for name in BROKEN:
            (notes / (Path(name).stem + ".xml")).write_text(
                _xml(name, size, size, [("ellipse", (10, 10, 40, 40))]))
    return folder
