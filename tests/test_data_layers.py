"""Data layers and the data transformer against Caffe's definitions.

References are written here independently: per-element loops of Caffe's index
mapping, the B4 ImageData batch of the original Caffe, and small files written by
the tests themselves (images, binaryproto means, LMDB, HDF5).
"""

import os
import sys
import types

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import shared_path
from pyfacelayers.blob import Blob
from pyfacelayers.errors import FormatError, LayerError
from pyfacelayers.fileio.blobs import array_to_blob
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2
from pyfacelayers.transform import DataTransformer

try:
    from PIL import Image as PIL
except ImportError:  # Pillow is an extra: only the image tests need it
    PIL = None
needs_pillow = pytest.mark.skipif(PIL is None, reason="Pillow is not installed (pip install pillow)")


def make_layer(text, phase=caffe_pb2.TRAIN, seed=0, dtype=np.float32, n_top=None):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    layer = create_layer(param, phase=phase, dtype=dtype, rng=np.random.default_rng(seed))
    top = [Blob(dtype=dtype) for _ in range(n_top or len(param.top))]
    layer.setup([], top)
    return layer, top


def run(layer, top):
    layer.reshape([], top)
    layer.forward([], top)
    return [t.data.copy() for t in top]


# -- reference transform: Caffe's loops, element by element -----------------------

def reference_transform(item, h_off, w_off, crop_h, crop_w, mirror, scale, mean=None,
                        mean_values=None, dtype=np.float32):
    """Caffe's DataTransformer loop for one (C, H, W) item, rounding like Dtype math."""
    f = np.dtype(dtype).type
    channels = item.shape[0]
    out = np.zeros((channels, crop_h, crop_w), dtype=dtype)
    for c in range(channels):
        for h in range(crop_h):
            for w in range(crop_w):
                pixel = f(item[c, h_off + h, w_off + w])
                if mean is not None:
                    value = (pixel - f(mean[c, h_off + h, w_off + w])) * f(np.float32(scale))
                elif mean_values is not None:
                    m = mean_values[c] if len(mean_values) > 1 else mean_values[0]
                    value = (pixel - f(np.float32(m))) * f(np.float32(scale))
                else:
                    value = pixel * f(np.float32(scale))
                out[c, h, crop_w - 1 - w if mirror else w] = value
    return out


def transform_param(text):
    return text_format.Parse(text, caffe_pb2.TransformationParameter())


ITEM = (np.arange(3 * 7 * 6) * 37 % 256).astype(np.uint8).reshape(3, 7, 6)


def candidates(item, crop, **kw):
    """Every output Caffe's transformer may give: each crop offset, mirrored or not."""
    c, h, w = item.shape
    out = {}
    for h_off in range(h - crop + 1):
        for w_off in range(w - crop + 1):
            for mirror in (False, True):
                out[(h_off, w_off, mirror)] = reference_transform(item, h_off, w_off, crop,
                                                                  crop, mirror, **kw)
    return out


def which(result, options):
    found = [key for key, ref in options.items() if np.array_equal(result, ref)]
    assert len(found) >= 1, "the output matches no crop offset / mirror of the reference"
    return found


def test_transform_no_options_is_scale_only():
    t = DataTransformer(transform_param("scale: 0.5"))
    got = t.transform(ITEM)
    np.testing.assert_array_equal(got, reference_transform(ITEM, 0, 0, 7, 6, False, 0.5))
    assert got.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_train_random_crop_and_mirror(dtype):
    p = transform_param("crop_size: 4 mirror: true scale: 0.0078125 "
                        "mean_value: 127.5 mean_value: 100 mean_value: 3")
    t = DataTransformer(p, phase=caffe_pb2.TRAIN, dtype=dtype, rng=np.random.default_rng(5))
    options = candidates(ITEM, 4, scale=0.0078125, mean_values=[127.5, 100, 3], dtype=dtype)
    seen = set()
    for _ in range(150):
        got = t.transform(ITEM)
        assert got.dtype == dtype and got.shape == (3, 4, 4)
        seen.update(which(got, options))
    # 4 row offsets x 3 column offsets x 2 mirrors: every choice shows up.
    assert {k[:2] for k in seen} == {(i, j) for i in range(4) for j in range(3)}
    assert {k[2] for k in seen} == {False, True}


def test_transform_test_phase_centre_crop():
    p = transform_param("crop_size: 4 scale: 2 mean_value: 10")
    t = DataTransformer(p, phase=caffe_pb2.TEST, rng=np.random.default_rng(1))
    for _ in range(3):  # always the same centred window: offsets (7-4)//2, (6-4)//2
        got = t.transform(ITEM)
        np.testing.assert_array_equal(
            got, reference_transform(ITEM, 1, 1, 4, 4, False, 2, mean_values=[10]))


def test_transform_mirror_is_random_in_test_phase_too():
    # Caffe draws the mirror coin whatever the phase (only the crop depends on it).
    p = transform_param("crop_size: 4 mirror: true")
    t = DataTransformer(p, phase=caffe_pb2.TEST, rng=np.random.default_rng(2))
    plain = reference_transform(ITEM, 1, 1, 4, 4, False, 1)
    flipped = reference_transform(ITEM, 1, 1, 4, 4, True, 1)
    kinds = set()
    for _ in range(40):
        got = t.transform(ITEM)
        kinds.add("plain" if np.array_equal(got, plain) else
                  "flipped" if np.array_equal(got, flipped) else "other")
    assert kinds == {"plain", "flipped"}


def write_mean(tmp_path, mean):
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(array_to_blob(mean[None], legacy_shape=True).SerializeToString())
    return str(path)


def test_transform_mean_file_cropped_at_the_same_offset(tmp_path):
    mean = (np.arange(3 * 7 * 6, dtype=np.float32).reshape(3, 7, 6) * 1.25) % 90
    path = write_mean(tmp_path, mean)
    p = transform_param('crop_size: 3 mirror: true scale: 0.25 mean_file: "%s"' % path)
    t = DataTransformer(p, phase=caffe_pb2.TRAIN, rng=np.random.default_rng(3))
    options = candidates(ITEM, 3, scale=0.25, mean=mean)
    for _ in range(30):
        which(t.transform(ITEM), options)
    t_test = DataTransformer(p, phase=caffe_pb2.TEST, rng=np.random.default_rng(3))
    got = t_test.transform(ITEM)
    centre = [reference_transform(ITEM, 2, 1, 3, 3, m, 0.25, mean=mean) for m in (False, True)]
    assert any(np.array_equal(got, ref) for ref in centre)


def test_transform_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="mean_file and mean_value"):
        DataTransformer(transform_param('mean_file: "m" mean_value: 1'))
    with pytest.raises(ValueError, match="force_color and force_gray"):
        DataTransformer(transform_param("force_color: true force_gray: true"))
    with pytest.raises(FormatError, match="no_such_mean"):
        DataTransformer(transform_param('mean_file: "%s"' % (tmp_path / "no_such_mean")))
    bad = tmp_path / "bad.binaryproto"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(FormatError, match="bad.binaryproto"):
        DataTransformer(transform_param('mean_file: "%s"' % bad))
    t = DataTransformer(transform_param("mean_value: 1 mean_value: 2"))
    with pytest.raises(ValueError, match="1 mean_value or as many as channels"):
        t.transform(ITEM)
    t = DataTransformer(transform_param("crop_size: 8"))
    with pytest.raises(ValueError, match="crop_size 8"):
        t.transform(ITEM)
    t = DataTransformer(transform_param('mean_file: "%s"' % write_mean(tmp_path, ITEM[:, :5])))
    with pytest.raises(ValueError, match="mean_file"):
        t.transform(ITEM)


def png_bytes(rgb):
    import io
    buffer = io.BytesIO()
    PIL.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


@needs_pillow
def test_transform_datums():
    t = DataTransformer(transform_param("scale: 0.5 mean_value: 4"))
    raw = caffe_pb2.Datum(channels=3, height=7, width=6, data=ITEM.tobytes(), label=2)
    np.testing.assert_array_equal(t.transform_datum(raw),
                                  reference_transform(ITEM, 0, 0, 7, 6, False, 0.5,
                                                      mean_values=[4]))
    floats = ITEM.astype(np.float32) / 3
    fd = caffe_pb2.Datum(channels=3, height=7, width=6, float_data=floats.ravel().tolist())
    np.testing.assert_array_equal(t.transform_datum(fd),
                                  reference_transform(floats, 0, 0, 7, 6, False, 0.5,
                                                      mean_values=[4]))
    rgb = ITEM.transpose(1, 2, 0).copy()
    enc = caffe_pb2.Datum(encoded=True, data=png_bytes(rgb))
    bgr_chw = rgb[:, :, ::-1].transpose(2, 0, 1)
    np.testing.assert_array_equal(t.transform_datum(enc),
                                  reference_transform(bgr_chw, 0, 0, 7, 6, False, 0.5,
                                                      mean_values=[4]))
    grey = DataTransformer(transform_param("force_gray: true")).transform_datum(enc)
    assert grey.shape == (1, 7, 6)
    short = caffe_pb2.Datum(channels=3, height=7, width=6, data=b"\x00" * 5)
    with pytest.raises(ValueError, match="holds 5 values"):
        t.transform_datum(short)
    junk = caffe_pb2.Datum(encoded=True, data=b"not an image")
    with pytest.raises(ValueError, match="could not decode"):
        t.transform_datum(junk)


# -- ImageData ----------------------------------------------------------------------

B4_LAYER = """name: "data" type: "ImageData" top: "data" top: "label"
transform_param { mean_value: 127.5 mean_value: 127.5 mean_value: 127.5 scale: 0.0078125
                  mirror: false }
image_data_param { source: "%s" root_folder: "%s" batch_size: 5 shuffle: false }"""


@needs_pillow
def test_imagedata_matches_caffe_b4():
    folder = shared_path("fixtures", "caffe-ref", "B4_imagedata")
    ref = np.load(os.path.join(folder, "B4_imagedata_f32.npz"))
    layer, top = make_layer(B4_LAYER % (os.path.join(folder, "list.txt"),
                                        os.path.join(folder, "images") + "/"))
    assert top[0].shape == (5, 3, 112, 96) and top[1].shape == (5,)
    data, label = run(layer, top)
    np.testing.assert_array_equal(label, ref["label"])
    np.testing.assert_array_equal(data[:4], ref["data"][:4])  # the PNGs: exact
    levels = np.abs(data[4].astype(np.float64) - ref["data"][4]) / 0.0078125
    assert levels.max() <= 1.0 + 1e-6, "JPEG decode differs by more than one level"


def write_images(folder, count, size=(5, 4), mode="RGB"):
    lines = []
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        shape = size + ((3,) if mode == "RGB" else ())
        PIL.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
            folder / ("im %d.png" % i))  # a space in the name, as Caffe allows
        lines.append("im %d.png %d" % (i, 10 + i))
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return str(folder / "list.txt")


def image_layer(folder, extra="", params="", phase=caffe_pb2.TRAIN, seed=0):
    text = ('name: "img" type: "ImageData" top: "data" top: "label" %s '
            'image_data_param { source: "%s" root_folder: "%s/" %s }'
            % (extra, folder / "list.txt", folder, params))
    return make_layer(text, phase=phase, seed=seed)


@needs_pillow
def test_imagedata_pixels_are_bgr_chw(tmp_path):
    write_images(tmp_path, 2)
    layer, top = image_layer(tmp_path, params="batch_size: 2")
    data, label = run(layer, top)
    for i in range(2):
        rgb = np.asarray(PIL.open(tmp_path / ("im %d.png" % i)))
        np.testing.assert_array_equal(data[i], rgb[:, :, ::-1].transpose(2, 0, 1))
    np.testing.assert_array_equal(label, [10, 11])


@needs_pillow
def test_imagedata_wraps_around(tmp_path):
    write_images(tmp_path, 5)
    layer, top = image_layer(tmp_path, params="batch_size: 3")
    labels = [run(layer, top)[1] for _ in range(4)]
    np.testing.assert_array_equal(np.concatenate(labels),
                                  [10, 11, 12, 13, 14, 10, 11, 12, 13, 14, 10, 11])


@needs_pillow
def test_imagedata_shuffle_is_reproducible(tmp_path):
    write_images(tmp_path, 6)

    def sequence(seed):
        layer, top = image_layer(tmp_path, params="batch_size: 4 shuffle: true", seed=seed)
        return np.concatenate([run(layer, top)[1] for _ in range(6)])  # 4 epochs

    first = sequence(7)
    np.testing.assert_array_equal(first, sequence(7))
    assert any(not np.array_equal(first, sequence(s)) for s in (8, 9, 10))
    epochs = first.reshape(4, 6)
    for epoch in epochs:  # every epoch is a permutation of the list
        assert sorted(epoch) == list(range(10, 16))
    assert len({tuple(e) for e in epochs}) > 1, "the list should be reshuffled each epoch"


@needs_pillow
def test_imagedata_rand_skip_and_grey_and_resize(tmp_path):
    write_images(tmp_path, 5, size=(6, 8))
    layer, top = image_layer(tmp_path, params="batch_size: 5 rand_skip: 5", seed=4)
    label = run(layer, top)[1]
    start = int(label[0]) - 10
    np.testing.assert_array_equal(label, [10 + (start + k) % 5 for k in range(5)])
    layer, top = image_layer(tmp_path, params="batch_size: 2 is_color: false "
                                              "new_height: 3 new_width: 4")
    assert top[0].shape == (2, 1, 3, 4)
    data = run(layer, top)[0]
    grey = np.asarray(PIL.open(tmp_path / "im 0.png").convert("L"))
    # An exact 2x reduction: OpenCV averages 2x2 blocks (rounded).
    blocks = grey.reshape(3, 2, 4, 2).astype(np.int64).sum(axis=(1, 3))
    np.testing.assert_array_equal(data[0, 0], (blocks + 2) >> 2)


@needs_pillow
def test_imagedata_crop_mirror_mean_in_train(tmp_path):
    write_images(tmp_path, 1, size=(7, 6))
    extra = "transform_param { crop_size: 4 mirror: true mean_value: 127.5 scale: 0.0078125 }"
    layer, top = image_layer(tmp_path, extra=extra, params="batch_size: 1", seed=11)
    assert top[0].shape == (1, 3, 4, 4)
    rgb = np.asarray(PIL.open(tmp_path / "im 0.png"))
    item = rgb[:, :, ::-1].transpose(2, 0, 1)
    options = candidates(item, 4, scale=0.0078125, mean_values=[127.5])
    for _ in range(5):
        which(run(layer, top)[0][0], options)


@needs_pillow
def test_imagedata_errors_name_the_path(tmp_path):
    with pytest.raises(LayerError, match="no_list.txt"):
        make_layer('name: "d" type: "ImageData" top: "data" top: "label" '
                   'image_data_param { source: "%s" batch_size: 1 }' % (tmp_path / "no_list.txt"))
    write_images(tmp_path, 2)
    with open(tmp_path / "list.txt", "a") as handle:
        handle.write("missing.png 3\nbroken.png 4\n")
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    layer, top = image_layer(tmp_path, params="batch_size: 3")
    with pytest.raises(LayerError, match=r"missing\.png.*line 3"):
        run(layer, top)
    layer, top = image_layer(tmp_path, params="batch_size: 1 rand_skip: 1")
    layer.line_id = 3
    with pytest.raises(LayerError, match=r"could not decode.*broken\.png.*line 4"):
        run(layer, top)
    (tmp_path / "list.txt").write_text("im 0.png notanumber\n")
    with pytest.raises(LayerError, match="line 1"):
        image_layer(tmp_path, params="batch_size: 1")
    (tmp_path / "list.txt").write_text("\n\n")
    with pytest.raises(LayerError, match="empty"):
        image_layer(tmp_path, params="batch_size: 1")


def test_resize_linear_is_opencv_bilinear_within_one_level():
    from pyfacelayers.images import resize_linear
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    for out_h, out_w in [(13, 10), (5, 4), (9, 7), (20, 3)]:
        got = resize_linear(img, out_h, out_w)
        assert got.shape == (out_h, out_w, 3) and got.dtype == np.uint8

        def coords(n_in, n_out):  # pixel-centre mapping, clamped at the edges
            x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
            lo = np.floor(x).astype(int)
            return lo, np.minimum(lo + 1, n_in - 1), x - lo

        y0, y1, fy = coords(9, out_h)
        x0, x1, fx = coords(7, out_w)
        f = img.astype(np.float64)
        rows = f[:, x0] * (1 - fx)[None, :, None] + f[:, x1] * fx[None, :, None]
        exact = rows[y0] * (1 - fy)[:, None, None] + rows[y1] * fy[:, None, None]
        assert np.abs(got - exact).max() <= 1.0
    np.testing.assert_array_equal(resize_linear(img, 9, 7), img)
    flat = np.full((5, 5, 1), 77, np.uint8)
    np.testing.assert_array_equal(resize_linear(flat, 8, 3), np.full((8, 3, 1), 77))


# cv2.resize(img, (w, h)) (INTER_LINEAR) of OpenCV 4.6.0 (the version that made the B4
# fixture), for img = (arange(5*6*3) * 37 % 256) as a 5x6x3 uint8 image.
OPENCV_46_RESIZE = {
    (7, 4): [28, 65, 102, 194, 39, 76, 105, 142, 115, 79, 116, 89, 79, 116, 153, 136, 91, 127,
             156, 83, 93, 130, 168, 68, 107, 144, 181, 81, 118, 155, 184, 65, 102, 158, 177, 77,
             80, 117, 154, 54, 91, 128, 157, 130, 167, 131, 104, 141, 144, 181, 81, 118, 155, 192,
             84, 103, 139, 195, 77, 114, 153, 190, 90, 128, 165, 174, 93, 130, 167, 177, 105, 142,
             132, 169, 142, 106, 143, 116, 145, 182, 219, 119, 156, 193],
    (3, 11): [51, 88, 125, 59, 96, 133, 73, 110, 147, 122, 89, 127, 183, 57, 94, 158, 67, 104, 129,
              85, 114, 143, 145, 82, 146, 183, 61, 113, 150, 75, 94, 131, 83, 52, 89, 126, 87, 124,
              161, 148, 185, 222, 104, 141, 178, 25, 62, 99, 74, 111, 148, 134, 159, 196, 195, 80,
              117, 220, 36, 73, 141, 97, 134, 95, 132, 169, 138, 175, 127, 146, 183, 108, 160, 197,
              75, 139, 176, 112, 107, 144, 173, 117, 154, 191, 127, 164, 201, 94, 131, 168, 85, 110,
              147, 146, 124, 161, 181, 133, 170],
}


@pytest.mark.parametrize("size", sorted(OPENCV_46_RESIZE))
def test_resize_linear_matches_opencv_exactly(size):
    from pyfacelayers.images import resize_linear
    img = (np.arange(5 * 6 * 3) * 37 % 256).astype(np.uint8).reshape(5, 6, 3)
    expected = np.array(OPENCV_46_RESIZE[size], dtype=np.uint8).reshape(size + (3,))
    np.testing.assert_array_equal(resize_linear(img, *size), expected)


# -- MemoryData ---------------------------------------------------------------------

MEMORY = ('name: "m" type: "MemoryData" top: "data" top: "label" '
          'memory_data_param { batch_size: 2 channels: 3 height: 2 width: 1 }')


def test_memorydata_cycles_through_the_arrays():
    layer, top = make_layer(MEMORY)
    assert top[0].shape == (2, 3, 2, 1) and top[1].shape == (2,)
    data = np.arange(6 * 6, dtype=np.float32).reshape(6, 3, 2, 1)
    labels = np.arange(6, dtype=np.float32) + 0.5
    layer.set_input_arrays(data, labels)
    for step in range(5):
        start = 2 * (step % 3)
        got_data, got_label = run(layer, top)
        np.testing.assert_array_equal(got_data, data[start:start + 2])
        assert top[1].shape == (2, 1, 1, 1)
        np.testing.assert_array_equal(got_label.ravel(), labels[start:start + 2])
    layer.set_input_arrays(data[:2] + 100, labels[:2, None, None, None])  # pycaffe 4-D labels
    np.testing.assert_array_equal(run(layer, top)[0], data[:2] + 100)


def test_memorydata_position_is_restored():
    data = np.arange(6 * 6, dtype=np.float32).reshape(6, 3, 2, 1)
    labels = np.arange(6, dtype=np.float32)
    layer, top = make_layer(MEMORY)
    assert layer.get_state() == {}
    layer.set_input_arrays(data, labels)
    run(layer, top)
    state = layer.get_state()
    assert state == {"pos": 2, "count": 6}
    # arrays first, then the restore (pycaffe's usual order) ...
    again, top2 = make_layer(MEMORY)
    again.set_input_arrays(data, labels)
    again.set_state(state)
    np.testing.assert_array_equal(run(again, top2)[0], data[2:4])
    # ... or the restore first: applied when the arrays come
    later, top3 = make_layer(MEMORY)
    later.set_state(state)
    later.set_input_arrays(data, labels)
    np.testing.assert_array_equal(run(later, top3)[0], data[2:4])
    later.set_input_arrays(data, labels)  # a later reset starts from item 0 again
    np.testing.assert_array_equal(run(later, top3)[0], data[0:2])
    other, _ = make_layer(MEMORY)
    other.set_state(state)
    with pytest.raises(LayerError, match=r"item 2 of 6\) does not fit the arrays given "
                                         r"\(4 items"):
        other.set_input_arrays(data[:4], labels[:4])
    for bad in ({"pos": -2, "count": 6}, {"pos": 2}, [2, 6], {"pos": True, "count": 6}):
        with pytest.raises(LayerError, match="saved|bad saved state"):
            make_layer(MEMORY)[0].set_state(bad)


def test_memorydata_errors():
    with pytest.raises(LayerError, match="must be positive"):
        make_layer('name: "m" type: "MemoryData" top: "a" top: "b" '
                   'memory_data_param { batch_size: 2 channels: 3 }')
    layer, top = make_layer(MEMORY)
    with pytest.raises(LayerError, match="set_input_arrays"):
        run(layer, top)
    with pytest.raises(LayerError, match="multiple of batch_size"):
        layer.set_input_arrays(np.zeros((3, 3, 2, 1)), np.zeros(3))
    with pytest.raises(LayerError, match=r"\(N, 3, 2, 1\)"):
        layer.set_input_arrays(np.zeros((2, 3, 2, 2)), np.zeros(2))
    with pytest.raises(LayerError, match="same first dimension"):
        layer.set_input_arrays(np.zeros((2, 3, 2, 1)), np.zeros(4))


# -- Input and DummyData ------------------------------------------------------------

def test_input_shapes():
    _, top = make_layer('name: "i" type: "Input" top: "a" top: "b" '
                        'input_param { shape { dim: 2 dim: 3 } }')
    assert top[0].shape == (2, 3) and top[1].shape == (2, 3)
    _, top = make_layer('name: "i" type: "Input" top: "a" top: "b" '
                        'input_param { shape { dim: 2 dim: 3 } shape { dim: 4 } }')
    assert top[0].shape == (2, 3) and top[1].shape == (4,)
    with pytest.raises(LayerError, match="3 tops vs. 2 shapes"):
        make_layer('name: "i" type: "Input" top: "a" top: "b" top: "c" '
                   'input_param { shape { dim: 2 } shape { dim: 4 } }')


def test_dummydata_constant_default_and_legacy_shapes():
    layer, top = make_layer('name: "d" type: "DummyData" top: "a" top: "b" '
                            'dummy_data_param { num: 2 channels: 3 height: 1 width: 4 '
                            'num: 1 channels: 1 height: 1 width: 1 }')
    assert top[0].shape == (2, 3, 1, 4) and top[1].shape == (1, 1, 1, 1)
    a, b = run(layer, top)
    assert not a.any() and not b.any()
    layer, top = make_layer('name: "d" type: "DummyData" top: "a" dummy_data_param { '
                            'shape { dim: 3 } data_filler { type: "constant" value: 2.5 } }')
    np.testing.assert_array_equal(run(layer, top)[0], [2.5, 2.5, 2.5])
    with pytest.raises(LayerError, match="only one may be specified"):
        make_layer('name: "d" type: "DummyData" top: "a" dummy_data_param { '
                   'shape { dim: 3 } num: 1 channels: 1 height: 1 width: 1 }')
    with pytest.raises(LayerError, match="give channels once or once per top"):
        make_layer('name: "d" type: "DummyData" top: "a" dummy_data_param { num: 1 }')


def test_dummydata_refills_random_tops_every_forward(monkeypatch):
    calls = []

    def fake_fill(param, shape, dtype, rng):
        calls.append(param.type)
        return rng.standard_normal(shape).astype(dtype)

    module = types.ModuleType("pyfacelayers.fillers")
    module.fill = fake_fill
    monkeypatch.setitem(sys.modules, "pyfacelayers.fillers", module)
    layer, top = make_layer('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                            'shape { dim: 2 dim: 2 } data_filler { type: "gaussian" } '
                            'data_filler { type: "constant" value: 1 } }')
    assert calls == []  # only the constant top is filled at setup
    first = run(layer, top)
    second = run(layer, top)
    assert calls == ["gaussian", "gaussian"]
    assert not np.array_equal(first[0], second[0])
    np.testing.assert_array_equal(second[1], np.ones((2, 2)))


# -- Data (LMDB) --------------------------------------------------------------------

def write_lmdb(path, datums):
    lmdb = pytest.importorskip("lmdb", reason="the lmdb package is not installed")
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, datum in enumerate(datums):
            value = datum if isinstance(datum, bytes) else datum.SerializeToString()
            txn.put(b"%08d" % i, value)
    env.close()


def data_layer(path, extra="", batch=2, backend="LMDB", n_top=2, seed=0, phase=caffe_pb2.TRAIN):
    tops = 'top: "data" top: "label"' if n_top == 2 else 'top: "data"'
    return make_layer('name: "db" type: "Data" %s %s data_param { source: "%s" batch_size: %d '
                      'backend: %s }' % (tops, extra, path, batch, backend), seed=seed,
                      phase=phase)


def test_data_layer_lmdb_round_trip(tmp_path):
    items = [np.random.default_rng(i).integers(0, 256, (3, 4, 5), dtype=np.uint8)
             for i in range(3)]
    datums = [caffe_pb2.Datum(channels=3, height=4, width=5, data=a.tobytes(), label=7 + i)
              for i, a in enumerate(items)]
    write_lmdb(tmp_path / "db", datums)
    layer, top = data_layer(tmp_path / "db", extra="transform_param { scale: 0.5 }")
    assert top[0].shape == (2, 3, 4, 5) and top[1].shape == (2,)
    batches = [run(layer, top) for _ in range(3)]
    order = [0, 1, 2, 0, 1, 2]  # wraps around at the end of the database
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(labels, [7 + i for i in order])
    for got, i in zip(data, order):
        np.testing.assert_array_equal(got, items[i].astype(np.float32) * 0.5)


@needs_pillow
def test_data_layer_float_and_encoded_datums(tmp_path):
    floats = np.linspace(-1, 1, 2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    write_lmdb(tmp_path / "f", [caffe_pb2.Datum(channels=2, height=3, width=2, label=1,
                                                float_data=floats.ravel().tolist())])
    layer, top = data_layer(tmp_path / "f", batch=1, n_top=1)
    np.testing.assert_array_equal(run(layer, top)[0][0], floats)
    rgb = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    write_lmdb(tmp_path / "e", [caffe_pb2.Datum(encoded=True, data=png_bytes(rgb), label=9)])
    layer, top = data_layer(tmp_path / "e", batch=1,
                            extra="transform_param { crop_size: 2 }", phase=caffe_pb2.TEST)
    data, label = run(layer, top)
    np.testing.assert_array_equal(data[0], rgb[1:3, 2:4, ::-1].transpose(2, 0, 1))
    assert label[0] == 9


def test_data_layer_errors(tmp_path):
    with pytest.raises(LayerError, match="LEVELDB is not supported"):
        data_layer(tmp_path / "x", backend="LEVELDB")
    pytest.importorskip("lmdb", reason="the lmdb package is not installed")
    with pytest.raises(LayerError, match="does not exist"):
        data_layer(tmp_path / "nowhere")
    write_lmdb(tmp_path / "junk", [b"\xff\xff\xff\xff"])
    with pytest.raises(LayerError, match="not a serialized Datum"):
        data_layer(tmp_path / "junk")


# -- HDF5Data -------------------------------------------------------------------------

def write_h5(path, **datasets):
    h5py = pytest.importorskip("h5py", reason="the h5py package is not installed")
    with h5py.File(path, "w") as handle:
        for name, array in datasets.items():
            handle.create_dataset(name, data=array)


def hdf5_layer(tmp_path, files, batch, shuffle=False, seed=0, extra=""):
    (tmp_path / "list.txt").write_text("\n".join(str(tmp_path / f) for f in files) + "\n")
    return make_layer('name: "h" type: "HDF5Data" top: "data" top: "label" %s '
                      'hdf5_data_param { source: "%s" batch_size: %d shuffle: %s }'
                      % (extra, tmp_path / "list.txt", batch, "true" if shuffle else "false"),
                      seed=seed)


def test_hdf5_data_round_trip_across_files(tmp_path):
    a = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 2, 2)
    b = -np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2) - 1
    write_h5(tmp_path / "a.h5", data=a, label=np.array([0, 1, 2], np.int32))
    write_h5(tmp_path / "b.h5", data=b, label=np.array([3, 4], np.int32))
    layer, top = hdf5_layer(tmp_path, ["a.h5", "b.h5"], batch=4)
    assert top[0].shape == (4, 2, 2) and top[1].shape == (4,)
    rows = np.concatenate([a, b])
    got = [run(layer, top) for _ in range(3)]
    data = np.concatenate([g[0] for g in got])
    labels = np.concatenate([g[1] for g in got])
    order = [i % 5 for i in range(12)]
    np.testing.assert_array_equal(labels, order)
    np.testing.assert_array_equal(data, rows[order].astype(np.float32))


def test_hdf5_data_shuffle_is_reproducible(tmp_path):
    write_h5(tmp_path / "a.h5", data=np.arange(6.0)[:, None], label=np.arange(6.0))
    write_h5(tmp_path / "b.h5", data=np.arange(6.0, 10)[:, None], label=np.arange(6.0, 10))

    def sequence(seed):
        layer, top = hdf5_layer(tmp_path, ["a.h5", "b.h5"], batch=5, shuffle=True, seed=seed)
        out = np.concatenate([run(layer, top)[1] for _ in range(6)])  # 3 passes
        data = np.concatenate([top[0].data.ravel()])
        np.testing.assert_array_equal(data, out[-5:])  # data rows follow their labels
        return out

    first = sequence(1)
    np.testing.assert_array_equal(first, sequence(1))
    assert not np.array_equal(first, np.arange(30) % 10)
    for epoch in first.reshape(3, 10):
        assert sorted(epoch) == list(range(10))


def test_hdf5_data_errors(tmp_path):
    write_h5(tmp_path / "a.h5", data=np.zeros((3, 2)), other=np.zeros(3))
    with pytest.raises(LayerError, match=r'no dataset "label"'):
        hdf5_layer(tmp_path, ["a.h5"], batch=1)
    with pytest.raises(LayerError, match="missing.h5"):
        hdf5_layer(tmp_path, ["missing.h5"], batch=1)
    with pytest.raises(LayerError, match="does not transform"):
        hdf5_layer(tmp_path, ["a.h5"], batch=1, extra="transform_param { scale: 2 }")
    with pytest.raises(LayerError, match="no_list"):
        make_layer('name: "h" type: "HDF5Data" top: "data" '
                   'hdf5_data_param { source: "%s" batch_size: 1 }' % (tmp_path / "no_list"))
    write_h5(tmp_path / "c.h5", data=np.zeros((3, 2)), label=np.zeros(2))
    with pytest.raises(LayerError, match="number of rows"):
        hdf5_layer(tmp_path, ["c.h5"], batch=1)


@needs_pillow
def test_grey_jpeg_read_is_libjpeg_luma(tmp_path):
    # OpenCV's IMREAD_GRAYSCALE lets libjpeg output the Y plane of a colour JPEG.
    from pyfacelayers.images import read_image
    y, x = np.mgrid[0:16, 0:16]  # smooth colours: no clipping in the RGB reconstruction
    rgb = np.stack([8 * y + 40, 6 * x + 60, 4 * (x + y) + 30], axis=2).astype(np.uint8)
    PIL.fromarray(rgb).save(tmp_path / "c.jpg", quality=90)
    grey = read_image(str(tmp_path / "c.jpg"), color=False)
    assert grey.shape == (16, 16, 1)
    img = PIL.open(tmp_path / "c.jpg")
    img.draft("L", img.size)
    np.testing.assert_array_equal(grey[:, :, 0], np.asarray(img))
    colour = read_image(str(tmp_path / "c.jpg"), color=True)
    luma = colour[..., ::-1].astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(grey[:, :, 0] - luma).max() <= 2.0


@needs_pillow
def test_image_list_parsing_follows_caffe(tmp_path):
    write_images(tmp_path, 2)
    # tab separator, atoi-style label "3.0" -> 3, Windows line end, blank lines
    (tmp_path / "list.txt").write_text("im 0.png\t3.0\r\n\nim 1.png   -2\n")
    layer, top = image_layer(tmp_path, params="batch_size: 2")
    np.testing.assert_array_equal(run(layer, top)[1], [3, -2])
    (tmp_path / "list.txt").write_text("im0.png\n")
    with pytest.raises(LayerError, match="line 1: expected"):
        image_layer(tmp_path, params="batch_size: 1")


def test_missing_optional_packages_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes "import lmdb" fail
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(LayerError, match="needs the lmdb package"):
        data_layer(tmp_path / "db")
    (tmp_path / "list.txt").write_text("a.h5\n")
    with pytest.raises(LayerError, match="needs the h5py package"):
        make_layer('name: "h" type: "HDF5Data" top: "data" hdf5_data_param { source: "%s" '
                   'batch_size: 1 }' % (tmp_path / "list.txt"))


def test_memorydata_resume_continues_with_the_next_batch(tmp_path):
    """A snapshot taken mid-epoch and restored (arrays set again) gives the same weights
    as a run that was never stopped: the MemoryData position travels in the side file."""
    import pyfacelayers as caffe
    text = ('base_lr: 0.1 lr_policy: "fixed" max_iter: 10 display: 0 random_seed: 3 '
            'snapshot_prefix: "%s" net_param { '
            'layer { name: "m" type: "MemoryData" top: "data" top: "label" '
            'memory_data_param { batch_size: 2 channels: 3 height: 1 width: 1 } } '
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
            'inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } } '
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" '
            'top: "loss" } }' % (tmp_path / "snap"))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((6, 3, 1, 1)).astype(np.float32)
    labels = rng.integers(0, 4, 6).astype(np.float32)

    def solver():
        s = caffe.get_solver(text)
        s.net.set_input_arrays(data, labels)
        return s
    straight = solver()
    straight.step(3)
    first = solver()
    first.step(2)  # position: item 4 of 6
    first.snapshot()
    resumed = solver()
    resumed.restore(str(tmp_path / "snap_iter_2.solverstate"))
    resumed.step(1)
    np.testing.assert_array_equal(resumed.net.params["ip"][0].data,
                                  straight.net.params["ip"][0].data)
