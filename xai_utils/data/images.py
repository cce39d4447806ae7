"""Loading images robustly, preprocessing them for a model, and the offline sample photos.

`load_image` accepts a path, a PIL image, a NumPy array or a tensor and always returns an
RGB uint8 array of shape H x W x 3, or raises an error that says what is wrong with the input.
"""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

from xai_utils.core.inputs import input_spec, model_info
from xai_utils.core.model_state import model_device
from xai_utils.data.paths import DATA_DIR

MIN_SIDE = 16
MAX_SIDE = 4096
_ALPHA_BACKGROUND = (255, 255, 255)


class ImageLoadError(ValueError):
    """The input cannot be turned into an RGB image."""


def _pil_to_rgb(img: Image.Image, source: str) -> np.ndarray:
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        warnings.warn(f"{source}: animated image with {frames} frames; using the first frame",
                      stacklevel=3)
        img = next(ImageSequence.Iterator(img))
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return _array_to_rgb(np.clip(arr / top, 0, 1), source)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        warnings.warn(f"{source}: alpha channel composited onto white", stacklevel=3)
        background = Image.new("RGB", img.size, _ALPHA_BACKGROUND)
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        img = background
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _array_to_rgb(arr: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # C x H x W -> H x W x C
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ImageLoadError(f"{source}: expected H x W, H x W x 3 or H x W x 4, got {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{source}: array holds NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageLoadError(f"{source}: float images must lie in [0, 1], "
                                 f"got [{arr.min():.3g}, {arr.max():.3g}]")
        arr = np.round(arr * 255).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr // 257).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise ImageLoadError(f"{source}: integer images must lie in [0, 255]")
        arr = arr.astype(np.uint8)
    if arr.shape[-1] == 4:
        warnings.warn(f"{source}: alpha channel composited onto white", stacklevel=3)
        alpha = arr[..., 3:4].astype(np.float32) / 255
        arr = np.round(arr[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _check_size(arr: np.ndarray, source: str) -> np.ndarray:
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageLoadError(f"{source}: image is {w}x{h} px; at least {MIN_SIDE} px a side "
                             "is needed to explain anything")
    if max(h, w) > MAX_SIDE:
        scale = MAX_SIDE / max(h, w)
        warnings.warn(f"{source}: {w}x{h} px is larger than {MAX_SIDE} px; downscaled",
                      stacklevel=3)
        img = Image.fromarray(arr).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                          Image.Resampling.LANCZOS)
        arr = np.asarray(img)
    return arr


def _open(stream, name: str) -> np.ndarray:
    """Decode a file (path or binary stream) with PIL, with an error that names `name`."""
    try:
        with Image.open(stream) as img:
            img.load()
            return _pil_to_rgb(img, name)
    except UnidentifiedImageError as err:
        raise ImageLoadError(f"{name}: not an image file PIL can read") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"{name}: image too large to decode safely ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{name}: corrupt or truncated image ({err})") from err


def load_image(source, name: str | None = None) -> np.ndarray:
    """Return `source` as an RGB uint8 array (H x W x 3).

    Paths and the bytes of an image file (an upload) are read with PIL: grayscale, palette,
    16-bit and CMYK images are converted to RGB, transparency is composited onto white,
    animated files give their first frame (with a warning), and images larger than
    `MAX_SIDE` are downscaled. A string that is no file but the name of a sample photo
    (`sample_images()`) loads that photo. Arrays and tensors may be H x W, H x W x C or
    C x H x W, uint8 in [0, 255] or float in [0, 1]. `name` labels the input in errors.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.exists():
            if isinstance(source, str) and source in sample_images():
                return load_sample(source)
            raise FileNotFoundError(f"no image at {path} (and no sample photo of that name; "
                                    f"samples: {', '.join(sample_images())})")
        if path.is_dir():
            raise ImageLoadError(f"{path} is a folder, not an image")
        name = name or path.name
        arr = _open(path, name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "uploaded file"
        if not len(source):
            raise ImageLoadError(f"{name}: empty file")
        arr = _open(io.BytesIO(bytes(source)), name)
    elif isinstance(source, Image.Image):
        name = name or "PIL image"
        arr = _pil_to_rgb(source, name)
    elif isinstance(source, torch.Tensor):
        name = name or "tensor"
        arr = _array_to_rgb(source.detach().cpu().numpy(), name)
    elif isinstance(source, np.ndarray):
        name = name or "array"
        arr = _array_to_rgb(source, name)
    else:
        raise TypeError(f"cannot load an image from {type(source).__name__}; pass a path, "
                        "the bytes of an image file, a PIL image, a NumPy array or a tensor")
    return _check_size(arr, name)


def image_name(source) -> str:
    """A short label for an entry of a notebook's IMAGES: a sample's name or a file's stem."""
    return Path(source).stem if isinstance(source, (str, Path)) else type(source).__name__


def _resize_and_crop(img: np.ndarray, size: int, crop_pct: float, interpolation: str) -> np.ndarray:
    """Resize the shorter side to size / crop_pct, then centre-crop size x size (timm eval)."""
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                "nearest": Image.Resampling.NEAREST}[interpolation]
    h, w = img.shape[:2]
    short = int(round(size / crop_pct))
    scale = short / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    pil = Image.fromarray(img)
    if (new_w, new_h) != (w, h):
        pil = pil.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)))


def preprocess(images, model, size: int | None = None) -> torch.Tensor:
    """Turn one image or a list of images into the B x 3 x H x W input `model` expects.

    Uses the resize, centre crop and normalisation of `model.xai` (ImageNet defaults for
    other models), on the model's device.
    """
    info = model_info(model)
    size = size or info.input_size
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("preprocess needs at least one image")
    arrays = [_resize_and_crop(load_image(im), size, info.crop_pct, info.interpolation)
              for im in images]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return input_spec(model).normalize(batch).to(model_device(model))


def to_image(x: torch.Tensor, model=None) -> np.ndarray:
    """Undo `preprocess`: B x 3 x H x W (or 3 x H x W) -> float array in [0, 1], B x H x W x 3."""
    spec = input_spec(model, x.device)
    single = x.dim() == 3
    x = x[None] if single else x
    img = spec.pixels(x.detach()).clamp(0, 1)
    out = img.permute(0, 2, 3, 1).cpu().numpy()
    return out[0] if single else out


@lru_cache(maxsize=1)
def _sample_table() -> dict:
    table = json.loads((DATA_DIR / "samples.json").read_text())
    table.pop("_about", None)
    return table


def sample_images() -> dict[str, Path]:
    """Name -> path of the offline sample photos (files shipped by installed packages)."""
    paths = {}
    for name, entry in _sample_table().items():
        spec = importlib.util.find_spec(entry["package"])
        if spec is None or spec.origin is None:
            continue
        path = Path(spec.origin).parent / entry["file"]
        if path.exists():
            paths[name] = path
    return paths


def load_sample(name: str) -> np.ndarray:
    """Load one of the offline sample photos by name (see `sample_images`)."""
    paths = sample_images()
    if name not in paths:
        raise ValueError(f"unknown sample image {name!r}; available: {', '.join(paths)}")
    return load_image(paths[name])


def composite(left, right, size: int = 224) -> np.ndarray:
    """Two photos side by side in one square picture (size x size, seam at column size // 2).

    Each half is the centre of its photo, cropped to a 1:2 portrait and resized, so that a
    model's square centre crop keeps both objects: a two-object test picture.
    """
    half = size // 2
    halves = []
    for img in (left, right):
        arr = load_image(img)
        h, w = arr.shape[:2]
        crop_w = min(w, h // 2)
        crop_h = min(h, 2 * crop_w)
        top, lft = (h - crop_h) // 2, (w - crop_w) // 2
        piece = Image.fromarray(arr[top:top + crop_h, lft:lft + crop_w])
        halves.append(np.asarray(piece.resize((half, size), Image.Resampling.BICUBIC)))
    return np.concatenate(halves, axis=1)
