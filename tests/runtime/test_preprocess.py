"""Preprocessing matches torchvision's transforms on real photographs; bad images are refused."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnx_pipeline.errors import InputError
from onnx_pipeline.imagespec import PreprocessSpec
from onnx_pipeline.runtime import preprocess
from onnx_pipeline.runtime.preprocess import load_batch, load_image, preprocess_image

torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")
skimage_data = pytest.importorskip("skimage.data")


def _photo(name: str) -> Image.Image:
    if name == "astronaut-tall":  # odd aspect ratios: 512×120 and 90×512 strips
        return Image.fromarray(skimage_data.astronaut()[:, 200:320])
    if name == "coffee-wide":
        return Image.fromarray(skimage_data.coffee()[150:240, :])
    if name == "chelsea-small":  # smaller than the crop: upscaled by Resize
        return Image.fromarray(skimage_data.chelsea()).resize((150, 100))
    return Image.fromarray(getattr(skimage_data, name)())


PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "astronaut-tall",
    "coffee-wide",
    "chelsea-small",
]


def _torchvision(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    pipeline = transforms.Compose(
        [
            transforms.Resize(spec.resize),
            transforms.CenterCrop(spec.crop),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    return pipeline(image).numpy()


@pytest.mark.parametrize("name", PHOTOS)
def test_matches_torchvision_on_photographs(name: str) -> None:
    image = _photo(name).convert("RGB")
    spec = PreprocessSpec()
    ours = preprocess_image(image, spec)
    theirs = _torchvision(image, spec)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert ours.dtype == np.float32
    assert float(np.abs(ours - theirs).max()) < 1e-5


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(resize=255),  # the seed notebook's Flask app
        PreprocessSpec(resize=72, crop=(64, 64)),
        PreprocessSpec(resize=300, crop=(224, 288)),  # non-square crop
    ],
    ids=["seed-255", "tiny", "non-square"],
)
def test_matches_torchvision_for_other_specs(spec: PreprocessSpec) -> None:
    for name in ("chelsea", "rocket"):
        image = _photo(name)
        assert float(np.abs(preprocess_image(image, spec) - _torchvision(image, spec)).max()) < 1e-5


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_files_match_torchvision(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"coffee.{fmt.lower()}"
    _photo("coffee").save(path, fmt)
    spec = PreprocessSpec()
    theirs = _torchvision(Image.open(path).convert("RGB"), spec)
    ours = load_batch([path], spec)
    assert ours.shape == (1, 3, 224, 224)
    assert float(np.abs(ours[0] - theirs).max()) < 1e-5
    from_bytes = preprocess_image(load_image(path.read_bytes()), spec)
    np.testing.assert_array_equal(from_bytes, ours[0])


def test_grey_and_alpha_images_become_rgb(tmp_path: Path) -> None:
    grey = load_image(_encode(_photo("camera")))
    assert grey.mode == "RGB"
    rgba = Image.fromarray(skimage_data.logo())  # RGBA
    assert load_image(_encode(rgba)).mode == "RGB"
    palette = _photo("chelsea").convert("P")
    palette.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(_encode(palette)).mode == "RGB"


def test_nhwc_layout() -> None:
    image = _photo("chelsea")
    nchw = preprocess_image(image, PreprocessSpec())
    nhwc = preprocess_image(image, PreprocessSpec(layout="NHWC"))
    np.testing.assert_array_equal(nhwc, nchw.transpose(1, 2, 0))


def test_spec_round_trip_and_unknown_keys() -> None:
    spec = PreprocessSpec(resize=72, crop=(64, 48), mean=(0.5,), std=(0.5,), color="L")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert PreprocessSpec.from_dict({"crop": 32}).crop == (32, 32)
    with pytest.raises(InputError, match=r"unknown preprocessing key\(s\)"):
        PreprocessSpec.from_dict({"resize": 1, "bogus": 2})


# ---------------------------------------------------------------------------- refused inputs
def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width``×``height`` and that holds no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"this is not an image, just some text\n" * 10, "not an image"),
        (_png_header(100_000, 100_000), "decompression bomb"),  # beyond Pillow's own limit
        (_png_header(9_000, 8_000), "over the 64,000,000-pixel limit"),  # beyond ours only
    ],
    ids=["empty", "text", "bomb-header", "over-our-limit"],
)
def test_bad_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_image(path)
    with pytest.raises(InputError, match=message):
        load_image(content)


def test_truncated_image_is_refused(tmp_path: Path) -> None:
    data = _encode(_photo("coffee"), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_image(path)


def test_real_image_over_the_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(_photo("chelsea"))  # 451×300 = 135,300 pixels
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 100_000)
    with pytest.raises(InputError, match="451x300 pixels, over the 100,000-pixel limit"):
        load_image(data)


def test_missing_path_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InputError, match="is not a file"):
        load_image(tmp_path)


def test_list_images(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="holds no image files"):
        preprocess.list_images(tmp_path)
    for name in ("b.JPG", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in preprocess.list_images(tmp_path)] == ["a.png", "b.JPG"]
