"""pyfacelayers.io: pycaffe's caffe.io, checked against hand-written references."""

import numpy as np
import pytest

from pyfacelayers import io as cio
from pyfacelayers.fileio.blobs import blob_to_array
from pyfacelayers.proto import caffe_pb2

# -- blobs and datums -----------------------------------------------------------------


def test_blobproto_round_trip_and_diff():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    diff = -arr
    blob = cio.array_to_blobproto(arr, diff)
    assert list(blob.shape.dim) == [2, 3, 4]
    assert not blob.HasField("num")
    back = cio.blobproto_to_array(blob)
    assert back.dtype == np.float64 and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, arr)  # float32 values survive exactly
    np.testing.assert_array_equal(cio.blobproto_to_array(blob, return_diff=True), diff)
    np.testing.assert_array_equal(blob_to_array(blob), arr)  # the project's reader agrees


def test_blobproto_legacy_shape_wins():
    blob = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=range(6))
    blob.shape.dim.extend([6])  # pycaffe reads the legacy fields when any is set
    assert cio.blobproto_to_array(blob).shape == (1, 2, 1, 3)
    bad = caffe_pb2.BlobProto(data=[1.0, 2.0])
    bad.shape.dim.extend([3])
    with pytest.raises(ValueError, match="holds 2 values"):
        cio.blobproto_to_array(bad)


def test_blobprotovector_strings():
    arrays = [np.ones((2, 2)), np.arange(3.0)]
    data = cio.arraylist_to_blobprotovector_str(arrays)
    assert isinstance(data, bytes)
    vector = caffe_pb2.BlobProtoVector.FromString(data)
    assert len(vector.blobs) == 2
    back = cio.blobprotovector_str_to_arraylist(data)
    for a, b in zip(arrays, back):
        np.testing.assert_array_equal(a, b)


def test_datum_round_trips():
    pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = cio.array_to_datum(pixels, label=5)
    assert (datum.channels, datum.height, datum.width, datum.label) == (2, 3, 4, 5)
    assert datum.data == pixels.tobytes() and not len(datum.float_data)
    back = cio.datum_to_array(datum)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)
    floats = pixels.astype(np.float32) / 4
    datum = cio.array_to_datum(floats)
    assert not datum.data and datum.label == 0
    back = cio.datum_to_array(datum)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, floats)
    with pytest.raises(ValueError, match="channels, height, width"):
        cio.array_to_datum(np.zeros((2, 2)))


# -- images ---------------------------------------------------------------------------

try:
    from PIL import Image as PIL
except ImportError:  # Pillow is an extra: only the image tests need it
    PIL = None
needs_pillow = pytest.mark.skipif(PIL is None, reason="Pillow is not installed (pip install pillow)")


@needs_pillow
def test_load_image_colour_grey_and_alpha(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    PIL.fromarray(rgb).save(tmp_path / "c.png")
    img = cio.load_image(str(tmp_path / "c.png"))
    assert img.dtype == np.float32 and img.shape == (5, 4, 3)
    np.testing.assert_array_equal(img, (rgb / 255.0).astype(np.float32))
    grey = cio.load_image(str(tmp_path / "c.png"), color=False)
    assert grey.shape == (5, 4, 1)
    expected = (0.2125 * rgb[..., 0] + 0.7154 * rgb[..., 1] + 0.0721 * rgb[..., 2]) / 255.0
    np.testing.assert_allclose(grey[..., 0], expected, rtol=1e-6)

    rgba = np.concatenate([rgb, np.full((5, 4, 1), 9, np.uint8)], axis=2)
    PIL.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(cio.load_image(str(tmp_path / "a.png")), img)

    lum = rgb[..., 0]
    PIL.fromarray(lum).save(tmp_path / "g.png")
    tiled = cio.load_image(str(tmp_path / "g.png"))
    assert tiled.shape == (5, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(tiled[..., c], (lum / 255.0).astype(np.float32))
    np.testing.assert_array_equal(cio.load_image(str(tmp_path / "g.png"), color=False)[..., 0],
                                  (lum / 255.0).astype(np.float32))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        cio.load_image(str(tmp_path / "nope.png"))
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.jpg"):
        cio.load_image(str(tmp_path / "bad.jpg"))


def bilinear_constant(img, out_h, out_w):
    """Per-pixel bilinear sampling at pixel-centre positions, zero outside the image."""
    h, w = img.shape

    def pixel(r, c):
        return img[r, c] if 0 <= r < h and 0 <= c < w else 0.0

    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            r = (i + 0.5) * h / out_h - 0.5
            c = (j + 0.5) * w / out_w - 0.5
            r0, c0 = int(np.floor(r)), int(np.floor(c))
            dr, dc = r - r0, c - c0
            out[i, j] = ((1 - dr) * ((1 - dc) * pixel(r0, c0) + dc * pixel(r0, c0 + 1))
                         + dr * ((1 - dc) * pixel(r0 + 1, c0) + dc * pixel(r0 + 1, c0 + 1)))
    return out


def test_resize_image_matches_scikit_image_constant_mode():
    im = np.array([[2.0, 4.0, 3.0], [6.0, 2.0, 5.0]])[:, :, None]
    got = cio.resize_image(im, (4, 5))
    assert got.dtype == np.float32 and got.shape == (4, 5, 1)
    unit = (im[..., 0] - 2.0) / 4.0
    expected = np.clip(bilinear_constant(unit, 4, 5), 0, 1) * 4.0 + 2.0
    np.testing.assert_allclose(got[..., 0], expected, rtol=1e-6)
    flat = cio.resize_image(np.full((3, 3, 3), 0.25), (2, 7))
    np.testing.assert_array_equal(flat, np.full((2, 7, 3), 0.25, np.float32))
    near = cio.resize_image(np.arange(4.0).reshape(2, 2, 1), (4, 4), interp_order=0)
    np.testing.assert_array_equal(near[..., 0], [[0, 0, 1, 1], [0, 0, 1, 1],
                                                 [2, 2, 3, 3], [2, 2, 3, 3]])
    # Other channel counts are resized corner to corner (scipy.ndimage.zoom).
    two = np.stack([np.array([[0.0, 3.0]] * 2), np.array([[1.0, 1.0]] * 2)], axis=2)
    zoomed = cio.resize_image(two, (2, 4))
    np.testing.assert_allclose(zoomed[0, :, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(zoomed[..., 1], np.ones((2, 4)))
    with pytest.raises(ValueError, match="interp_order"):
        cio.resize_image(im, (3, 3), interp_order=3)


def test_resize_image_anti_aliasing_as_newer_scikit_image():
    """anti_aliasing=True: a Gaussian of sigma (in/out - 1)/2 on each shrunk axis, zero
    outside (scipy.ndimage.gaussian_filter, mode constant), then the plain resize."""
    rng = np.random.default_rng(0)
    im = rng.random((37, 29, 3)) * 4 - 1
    got = cio.resize_image(im, (11, 40), anti_aliasing=True)
    unit = (im - im.min()) / (im.max() - im.min())
    ndimage = pytest.importorskip("scipy.ndimage")
    blurred = ndimage.gaussian_filter(unit, ((37 / 11 - 1) / 2, 0, 0), mode="constant")
    from pyfacelayers.io import anti_alias
    np.testing.assert_allclose(anti_alias(unit, (11, 40)), blurred, rtol=1e-12, atol=1e-12)
    both = ndimage.gaussian_filter(unit, ((37 / 11 - 1) / 2, (29 / 7 - 1) / 2, 0),
                                   mode="constant")
    np.testing.assert_allclose(anti_alias(unit, (11, 7)), both, rtol=1e-12, atol=1e-12)
    # growing: nothing to blur
    np.testing.assert_array_equal(cio.resize_image(im, (40, 30), anti_aliasing=True),
                                  cio.resize_image(im, (40, 30)))
    assert not np.allclose(got, cio.resize_image(im, (11, 40)), atol=1e-2)


def test_resize_image_both_behaviours_match_scikit_image_when_installed():
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(1)
    im = rng.random((50, 23, 3))
    unit = (im - im.min()) / (im.max() - im.min())
    for anti_aliasing in (False, True):
        want = transform.resize(unit, (13, 9), order=1, mode="constant",
                                anti_aliasing=anti_aliasing)
        want = want * (im.max() - im.min()) + im.min()
        np.testing.assert_allclose(cio.resize_image(im, (13, 9), anti_aliasing=anti_aliasing),
                                   want, rtol=1e-5, atol=1e-6)


def test_oversample_corners_centre_and_mirrors():
    images = [np.random.default_rng(i).random((6, 5, 2)) for i in range(2)]
    crops = cio.oversample(images, (4, 3))
    assert crops.shape == (20, 4, 3, 2) and crops.dtype == np.float32
    for n, im in enumerate(images):
        # corners, then the centre (rows int(3 - 2) = 1, columns int(2.5 - 1.5) = 1)
        windows = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
        for k, (y, x) in enumerate(windows):
            ref = im[y:y + 4, x:x + 3].astype(np.float32)
            np.testing.assert_array_equal(crops[10 * n + k], ref)
            np.testing.assert_array_equal(crops[10 * n + 5 + k], ref[:, ::-1])


# -- Transformer ----------------------------------------------------------------------


def make_transformer():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([104.0, 117.0, 123.0]))
    t.set_input_scale("data", 0.0078125)
    return t


def test_transformer_preprocess_against_hand_computation():
    image = np.random.default_rng(1).random((4, 5, 3)).astype(np.float32)
    kept = image.copy()
    got = make_transformer().preprocess("data", image)
    assert got.dtype == np.float32 and got.shape == (3, 4, 5)
    mean = [104.0, 117.0, 123.0]
    expected = np.empty((3, 4, 5))
    for c in range(3):  # blob channel c is image channel 2 - c (RGB -> BGR)
        for y in range(4):
            for x in range(5):
                expected[c, y, x] = (image[y, x, 2 - c] * 255.0 - mean[c]) * 0.0078125
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(image, kept)  # the input is not modified


def test_transformer_deprocess_inverts_preprocess():
    t = make_transformer()
    image = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
    back = t.deprocess("data", t.preprocess("data", image)[None])
    assert back.shape == (4, 5, 3)
    np.testing.assert_allclose(back, image, atol=1e-5)


def test_transformer_resizes_and_takes_elementwise_means():
    t = cio.Transformer({"data": (1, 1, 2, 3)})
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.full((2, 3), 0.5))
    out = t.preprocess("data", np.full((4, 6, 1), 0.75))
    np.testing.assert_allclose(out, np.full((1, 2, 3), 0.25))


def test_transformer_errors():
    t = cio.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(KeyError, match="not one of the net inputs"):
        t.set_raw_scale("label", 2)
    with pytest.raises(ValueError, match="transpose order"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="channel swap"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="mean has 2 channels"):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError, match="incompatible"):
        t.set_mean("data", np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="mean must have shape"):
        t.set_mean("data", np.zeros((1, 3, 4, 5)))
