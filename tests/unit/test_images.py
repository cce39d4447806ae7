import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import xai_utils as xu
from xai_utils.data.images import MAX_SIDE, ImageLoadError


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image"):
        xu.load_image(tmp_path / "nope.jpg")


def test_folder_and_text_file(tmp_path):
    with pytest.raises(ImageLoadError, match="folder"):
        xu.load_image(tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    with pytest.raises(ImageLoadError, match="not an image"):
        xu.load_image(bad)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, rgb, fmt):
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(np.kron(rgb, np.ones((4, 4, 1), np.uint8))).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        xu.load_image(path)


def test_rgb_roundtrip_png(tmp_path, rgb):
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    out = xu.load_image(path)
    assert out.dtype == np.uint8 and out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path, rgb):
    path = tmp_path / "g.png"
    Image.fromarray(rgb[..., 0]).save(path)
    out = xu.load_image(path)
    assert out.shape == (40, 60, 3)
    np.testing.assert_array_equal(out[..., 0], rgb[..., 0])
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_rgba_composited_on_white_with_warning(tmp_path, rgb):
    rgba = np.dstack([rgb, np.zeros((40, 60), np.uint8)])
    rgba[:20, :, 3] = 255
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    with pytest.warns(UserWarning, match="alpha"):
        out = xu.load_image(path)
    np.testing.assert_array_equal(out[:20], rgb[:20])
    assert (out[20:] == 255).all()


def test_palette_with_and_without_transparency(tmp_path, rgb):
    pal = Image.fromarray(rgb).convert("P")
    path = tmp_path / "p.png"
    pal.save(path)
    assert xu.load_image(path).shape == (40, 60, 3)
    pal.info["transparency"] = 0
    path2 = tmp_path / "pt.png"
    pal.save(path2, transparency=0)
    with pytest.warns(UserWarning, match="alpha"):
        assert xu.load_image(path2).shape == (40, 60, 3)


def test_16bit_scaled_to_8bit(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    out = xu.load_image(path)
    assert out.dtype == np.uint8 and out.shape == (32, 64, 3)
    assert out.min() == 0 and out.max() == 255


def test_cmyk_jpeg(tmp_path, rgb):
    path = tmp_path / "c.jpg"
    Image.fromarray(rgb).convert("CMYK").save(path, "JPEG")
    out = xu.load_image(path)
    assert out.shape == (40, 60, 3)


def test_animated_gif_gives_first_frame_with_warning(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.warns(UserWarning, match="2 frames"):
        out = xu.load_image(path)
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_tiny_image_is_an_error(tmp_path):
    path = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(ImageLoadError, match="at least"):
        xu.load_image(path)


def test_huge_image_is_downscaled(tmp_path):
    with pytest.warns(UserWarning, match="downscaled"):
        out = xu.load_image(np.zeros((40, MAX_SIDE + 400, 3), np.uint8))
    assert max(out.shape[:2]) == MAX_SIDE


def test_arrays_tensors_and_bad_types():
    chw = torch.rand(3, 20, 30)
    out = xu.load_image(chw)
    assert out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, np.round(chw.permute(1, 2, 0).numpy() * 255))
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        xu.load_image(np.full((20, 20, 3), 2.0))
    with pytest.raises(ImageLoadError, match="NaN"):
        xu.load_image(np.full((20, 20), np.nan))
    with pytest.raises(TypeError, match="cannot load"):
        xu.load_image(42)
    with pytest.raises(ImageLoadError, match="expected"):
        xu.load_image(np.zeros((20, 20, 5), np.uint8))


def test_sample_images_all_resolve():
    paths = xu.sample_images()
    assert set(paths) == {"chelsea", "coffee", "rocket", "astronaut", "motorcycle", "china",
                          "flower", "grace_hopper"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in paths:
            img = xu.load_sample(name)
            assert img.ndim == 3 and img.shape[2] == 3
    with pytest.raises(ValueError, match="unknown sample"):
        xu.load_sample("dog")


def test_preprocess_and_back(shapes_model, effnet):
    img = xu.load_sample("chelsea")
    x = xu.preprocess([img, img], effnet)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0  # mean = std = 0.5
    back = xu.to_image(x, effnet)
    assert back.shape == (2, 224, 224, 3) and 0 <= back.min() and back.max() <= 1
    # a centre crop of the original: the middle pixel survives resizing closely
    h, w = img.shape[:2]
    assert np.abs(back[0, 112, 112] * 255 - img[h // 2, w // 2]).max() < 40


def test_composite_is_square_with_both_photos():
    a = np.zeros((100, 300, 3), np.uint8)
    b = np.full((300, 100, 3), 255, np.uint8)
    pair = xu.composite(a, b, size=224)
    assert pair.shape == (224, 224, 3)
    assert (pair[:, :112] == 0).all() and (pair[:, 112:] == 255).all()


def test_bytes_of_a_file_and_sample_names(tmp_path, rgb):
    """An upload's bytes decode like the file; a sample's name loads the sample; a name that
    is neither says what exists."""
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(xu.load_image(path.read_bytes()), xu.load_image(path))
    np.testing.assert_array_equal(xu.load_image("chelsea"), xu.load_sample("chelsea"))
    with pytest.raises(ImageLoadError, match="mine.jpg: not an image file"):
        xu.load_image(b"plain text", name="mine.jpg")
    with pytest.raises(ImageLoadError, match="empty file"):
        xu.load_image(b"")
    with pytest.raises(FileNotFoundError, match="no sample photo of that name; samples: .*chelsea"):
        xu.load_image("chelsee")
