"""Safe image loading (EXIF rotation, every failure a MediaError naming the file) and build_transform."""
import io
import struct
import warnings
import zlib

import pytest
import torch
from PIL import Image

import captioner.media as media
from captioner.errors import MediaError
from captioner.media import build_transform, load_image, load_image_tensor
from conftest import DATA

JPG = DATA / "coco-mini" / "train2017" / "000000000790.jpg"  # 640x422 RGB
SPEC = {"size": 224, "crop_pct": 0.875, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}


def _png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR is patched (with a correct CRC) to claim width x height pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- load_image -------------------------------------------------------------------------------------------

def test_load_real_jpg_gives_rgb_pil_image():
    img = load_image(JPG)
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (640, 422)
    img.load()  # fully decoded and usable after the file is closed
    assert len(img.getpixel((320, 211))) == 3


def test_load_image_accepts_str_and_converts_grey_and_rgba(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("L", (5, 3), 200).save(grey)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 4), (10, 20, 30, 128)).save(rgba)
    g = load_image(str(grey))
    assert g.mode == "RGB" and g.size == (5, 3) and g.getpixel((0, 0)) == (200, 200, 200)
    r = load_image(rgba)  # half transparent: over white, as a viewer shows it
    assert r.mode == "RGB"
    assert r.getpixel((1, 1)) == pytest.approx(tuple(round(v * 128 / 255 + 255 * 127 / 255) for v in (10, 20, 30)),
                                               abs=1)


def test_transparency_is_shown_over_white_and_16_bit_and_float_samples_are_scaled(tmp_path):
    import numpy as np

    photo = np.asarray(Image.open(JPG).convert("L"))  # (H,W) uint8
    wide = tmp_path / "grey16.png"
    Image.fromarray(photo.astype(np.uint16) * 257).save(wide)  # the same photo with 16-bit samples
    assert Image.open(wide).mode.startswith("I")
    assert np.array_equal(np.asarray(load_image(wide)), np.asarray(Image.fromarray(photo).convert("RGB")))
    floats = tmp_path / "grey.tiff"
    Image.fromarray(photo.astype(np.float32) / 255).save(floats)  # float samples in [0, 1]
    assert np.abs(np.asarray(load_image(floats), dtype=int) - photo[..., None]).max() <= 1
    cut = np.asarray(Image.open(JPG).convert("RGBA")).copy()
    cut[:, :100] = (0, 0, 0, 0)  # a cut-out: transparent black at the left
    png = tmp_path / "cutout.png"
    Image.fromarray(cut).save(png)
    shown = np.asarray(load_image(png))
    assert (shown[:, :100] == 255).all() and np.array_equal(shown[:, 100:], cut[:, 100:, :3])
    # a PIL image given to the transform is shown the same way as the file
    t = build_transform(SPEC)
    assert torch.equal(t(Image.fromarray(cut)), t(load_image(png)))


def test_exif_orientation_6_is_honoured(tmp_path):
    # 40x20: left half red, right half blue. Orientation 6 = "rotate 90 degrees clockwise to display",
    # so the displayed image is 20x40 with red on top and blue at the bottom.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
        assert raw.getexif()[0x0112] == 6

    out = load_image(path)
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_no_exif_keeps_size(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (40, 20), (0, 128, 0)).save(path, "JPEG")
    assert load_image(path).size == (40, 20)


def _media_error(path) -> str:
    with pytest.raises(MediaError) as info:
        load_image(path)
    msg = str(info.value)
    assert str(path) in msg
    return msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    assert _media_error(path) == f"{path}: no such image file"
    assert _media_error(tmp_path).startswith(f"{tmp_path}: is a folder; expected an image file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _media_error(path) == f"{path}: file is empty; expected an image (jpg, png, webp, ...)"


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    assert _media_error(path) == f"{path}: not a readable image; expected jpg, png, webp, bmp, gif or tiff"


def test_truncated_jpg(tmp_path):
    data = JPG.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    msg = _media_error(path)
    assert msg.startswith(f"{path}: corrupt or truncated image (")
    assert "truncated" in msg


def test_decompression_bomb_png_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(20000, 20000))  # 400 Mpx: over Pillow's own hard limit
    msg = _media_error(path)
    assert msg.startswith(f"{path}: refused as a decompression bomb (")
    assert "400000000 pixels" in msg


def test_png_over_the_package_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_claiming(11000, 11000))  # 121 Mpx: under Pillow's hard limit, over ours (120 Mpx)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own warning above 89 Mpx is not shown: our limit decides
        msg = _media_error(path)
    assert msg == f"{path}: image is 11000x11000 pixels, over the limit of 120,000,000"


def test_a_photo_over_pillows_warning_size_is_read_without_its_warning(tmp_path):
    """A 108 Mpx phone photo is under our limit: it is read, and Pillow's DecompressionBombWarning (from
    89 Mpx on) does not reach the user's terminal."""
    path = tmp_path / "phone.jpg"
    Image.open(JPG).convert("RGB").resize((12000, 9000)).save(path, quality=50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = load_image(path, min_side=260)
    assert img.mode == "RGB" and img.size[0] * 3 == img.size[1] * 4 and min(img.size) >= 520  # DCT-scaled


def test_pixel_limit_is_the_module_constant(monkeypatch):
    assert media.MAX_IMAGE_PIXELS == 120_000_000
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 640 * 422 - 1)
    assert _media_error(JPG) == f"{JPG}: image is 640x422 pixels, over the limit of 270,079"
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 640 * 422)
    assert load_image(JPG).size == (640, 422)


def test_a_caller_catching_value_error_catches_media_errors(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="photo.jpg"):  # MediaError is a ValueError, for library callers
        load_image(str(bad))


# --- build_transform --------------------------------------------------------------------------------------

def test_eval_transform_shape_and_determinism():
    t = build_transform(SPEC, train=False)
    img = load_image(JPG)
    a, b = t(img), t(img)
    assert a.shape == (3, 224, 224)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    assert float(a.min()) >= -1.0 - 1e-6 and float(a.max()) <= 1.0 + 1e-6  # mean = std = 0.5 maps [0,1] to [-1,1]
    assert torch.equal(load_image_tensor(JPG, t), a)


def test_eval_transform_normalises_with_the_given_mean_and_std():
    spec = {"size": 32, "crop_pct": 1.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear"}
    img = Image.new("RGB", (50, 40), (255, 0, 51))  # a uniform image stays uniform through resize and crop
    x = build_transform(spec)(img)
    assert x.shape == (3, 32, 32)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.2 - 0.406) / 0.225]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((32, 32), expected[c]), atol=1e-5), c


def test_eval_transform_resizes_short_side_then_center_crops():
    # 0.875 crop: short side -> round(224 / 0.875) = 256, then the central 224x224.
    # A 512x256 image split into left/right halves of different colours keeps both halves in the crop, equally.
    img = Image.new("RGB", (512, 256), (0, 0, 0))
    img.paste((255, 255, 255), (256, 0, 512, 256))
    x = build_transform(SPEC)(img)
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[:, :, :100], torch.tensor(-1.0))
    assert torch.allclose(x[:, :, 124:], torch.tensor(1.0))


def test_train_transform_same_shape_and_seeded():
    t = build_transform(SPEC, train=True)
    img = load_image(JPG)
    torch.manual_seed(0)
    a = t(img)
    torch.manual_seed(0)
    b = t(img)
    c = t(img)
    assert a.shape == c.shape == (3, 224, 224)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)  # random crop + jitter
    assert not torch.equal(a, build_transform(SPEC, train=False)(img))


def test_train_transform_does_not_flip():
    # Captions say "left" and "right": the train transform must never mirror the image.
    spec = {**SPEC, "size": 32, "crop_pct": 1.0}
    img = Image.new("L", (64, 32))
    img.putdata([4 * x for _ in range(32) for x in range(64)])  # brightness grows left to right
    img = img.convert("RGB")
    t = build_transform(spec, train=True)
    torch.manual_seed(1)
    for _ in range(20):
        x = t(img)
        assert x.shape == (3, 32, 32)
        assert float(x[:, :, 0].mean()) < float(x[:, :, -1].mean())


@pytest.mark.parametrize("spec", [
    {"size": 260, "crop_pct": 0.890, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3},  # Lite2
    {"size": 224, "crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225]},  # torchvision backbones
])
def test_eval_transform_equals_torchvision(spec):
    """Preprocess writes eval out in PIL + torch (no torchvision import); it must equal torchvision's pipeline."""
    from torchvision import transforms as T

    ours = build_transform(spec)
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[spec["interpolation"]]
    theirs = T.Compose([T.Resize(ours.short_side, interpolation=interp), T.CenterCrop(spec["size"]), T.ToTensor(),
                        T.Normalize(spec["mean"], spec["std"])])
    photos = sorted((DATA / "everyday" / "images").glob("*.jpg"))[:6] + sorted((DATA / "flickr8k").rglob("*.jpg"))[:2]
    for path in photos:  # landscape and portrait, 400-640 px
        image = load_image(path)
        assert torch.equal(ours(image), theirs(image)), path
    square = Image.new("RGB", (ours.short_side, ours.short_side), (10, 200, 30))  # already the size: no resize
    assert torch.equal(ours(square), theirs(square))


def test_train_transform_is_random_crop_of_the_same_resize():
    spec = {"size": 224, "crop_pct": 0.875, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    image = load_image(sorted((DATA / "everyday" / "images").glob("*.jpg"))[0])
    torch.manual_seed(0)
    a = build_transform(spec, train=True)(image)
    torch.manual_seed(0)
    b = build_transform(spec, train=True)(image)
    assert a.shape == (3, 224, 224) and torch.equal(a, b)  # seeded: reproducible
    assert not torch.equal(a, build_transform(spec)(image))  # but not the centre crop


def test_large_jpeg_is_decoded_at_reduced_scale_not_below_twice_the_short_side(tmp_path):
    source = load_image(sorted((DATA / "everyday" / "images").glob("*.jpg"))[0])
    big = source.resize((source.width * 5, source.height * 5), Image.LANCZOS)  # ~3200x2100, like a camera photo
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)
    full, reduced = load_image(path), load_image(path, min_side=292)
    assert full.size == big.size
    assert min(reduced.size) >= 2 * 292 and reduced.width < big.width  # libjpeg scaled it while decoding
    spec = {"size": 260, "crop_pct": 0.890, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    transform = build_transform(spec)
    assert (transform(full) - transform(reduced)).abs().mean() < 0.02  # the same picture to the model
    png = tmp_path / "big.png"
    big.save(png)
    assert load_image(png, min_side=292).size == big.size  # only JPEGs have a reduced-scale decoder
