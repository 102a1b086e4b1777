"""Resource bounds: absurd sizes in a prototxt are refused before numpy allocates,
with a message naming the layer, shape, bytes, running total and limit; the limit's
environment variable; bad shapes."""

import tracemalloc

import numpy as np
import pytest

import pyfacelayers as caffe
from pyfacelayers import limits
from pyfacelayers.blob import Blob
from pyfacelayers.errors import (LayerError, PyFaceLayersError, ResourceLimitError,
                                 ShapeError)
from pyfacelayers.fileio import read_net


def build(text, phase=caffe.TEST, **kw):
    return caffe.Net(read_net(text), phase, seed=0, **kw)


def refused(text, limit=None, monkeypatch=None, **kw):
    """The ResourceLimitError of building ``text``; checks that nothing big was
    allocated on the way (numpy reports its allocations to tracemalloc)."""
    if limit is not None:
        monkeypatch.setenv(limits.ENV_VAR, str(limit))
    tracemalloc.start()
    try:
        with pytest.raises(ResourceLimitError) as info:
            build(text, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, "refused only after allocating %d bytes" % peak
    return info.value


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }'


def dims(*values):
    return " ".join("dim: %d" % v for v in values)


# -- the limit itself -----------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("1024", 1024), ("512M", 512 << 20), ("4G", 4 << 30), ("4g", 4 << 30),
    ("1.5K", 1536), ("2GiB", 2 << 30), ("3GB", 3 << 30), (" 7T ", 7 << 40),
    ("unlimited", None)])
def test_parse_size(text, expected):
    assert limits.parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "0", "-1G", "4X", "1e9", "G"])
def test_bad_limit_values_are_clear_errors(text, monkeypatch):
    with pytest.raises(ValueError, match=limits.ENV_VAR):
        limits.parse_size(text)
    if text.strip():
        monkeypatch.setenv(limits.ENV_VAR, text)
        with pytest.raises(ValueError, match=limits.ENV_VAR):
            build(INPUT % dims(2, 3))


def test_default_limit_is_half_the_physical_memory(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    physical = limits.physical_memory()
    assert physical > 0
    assert limits.memory_limit() == physical // 2
    monkeypatch.setenv(limits.ENV_VAR, "3M")
    assert limits.memory_limit() == 3 << 20


def test_error_is_a_memory_error_and_ours():
    assert issubclass(ResourceLimitError, MemoryError)
    assert issubclass(ResourceLimitError, PyFaceLayersError)
    assert issubclass(ShapeError, ValueError)


# -- refusals from a prototxt ----------------------------------------------------------
def test_input_of_a_billion_elements(monkeypatch):
    err = refused(INPUT % dims(1000, 1000, 1000), "1G", monkeypatch)
    message = str(err)
    assert 'layer "data" (Input)' in message and 'blob "data"' in message
    assert "(1000, 1000, 1000)" in message
    assert "%d bytes" % (2 * 4 * 10 ** 9) in message  # data and diff, float32
    assert "1.0 GiB" in message and limits.ENV_VAR in message
    assert err.layer_name == "data" and err.layer_type == "Input"
    assert err.requested == 8 * 10 ** 9 and err.limit == 1 << 30


def test_absurd_input_refused_with_the_default_limit(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    # 10^15 floats: more than any machine, whatever its memory.
    err = refused(INPUT % dims(10 ** 5, 10 ** 5, 10 ** 5))
    assert "half of the" in str(err)


def test_dims_whose_product_overflows_int64():
    # Each dim fits int64; their product (10^36) does not: still a clear refusal.
    err = refused(INPUT % dims(10 ** 18, 10 ** 18))
    assert "(1000000000000000000, 1000000000000000000)" in str(err)


def test_negative_dimension_is_a_shape_error():
    with pytest.raises(ShapeError, match=r'layer "data" \(Input\).*-3'):
        build(INPUT % dims(2, -3))
    with pytest.raises(ShapeError):
        Blob((4, -1))
    with pytest.raises(ShapeError):
        Blob((2.5,))


def test_empty_shape_with_huge_dimensions_is_a_shape_error():
    # Found by the fuzzer: numpy's "array is too big" for (0, 2**40, 2**40) leaked out.
    with pytest.raises(ShapeError, match=r"invalid shape \(0, 1099511627776, 1099511627776\)"
                                         r".*past 64 bits"):
        Blob((0, 2 ** 40, 2 ** 40))
    assert Blob((0, 2 ** 20, 2 ** 20)).count == 0   # empty and representable: fine


def test_inner_product_num_output_huge(monkeypatch):
    # num_output is a uint32 in caffe.proto; 4e9 outputs x 1000 inputs = 4e12 weights.
    text = (INPUT % dims(2, 1000) + 'layer { name: "fc5" type: "InnerProduct" bottom: '
            '"data" top: "fc5" inner_product_param { num_output: 4000000000 '
            'weight_filler { type: "xavier" } } }')
    err = refused(text)
    assert 'layer "fc5" (InnerProduct)' in str(err)
    assert "(4000000000, 1000)" in str(err)


def test_num_output_beyond_uint32_is_a_parse_error():
    text = (INPUT % dims(2, 10) + 'layer { name: "fc" type: "InnerProduct" bottom: "data" '
            'top: "fc" inner_product_param { num_output: 1000000000000 } }')
    with pytest.raises(PyFaceLayersError, match="num_output"):
        build(text)


def test_margin_inner_product_num_output_huge():
    text = ('layer { name: "data" type: "Input" top: "data" top: "label" input_param { '
            'shape { dim: 2 dim: 512 } shape { dim: 2 } } }'
            'layer { name: "fc6" type: "MarginInnerProduct" bottom: "data" bottom: "label" '
            'top: "fc6" margin_inner_product_param { num_output: 4000000000 type: QUADRUPLE '
            'weight_filler { type: "xavier" } } }')
    err = refused(text, phase=caffe.TRAIN)
    assert 'layer "fc6" (MarginInnerProduct)' in str(err)


def test_convolution_num_output_huge():
    text = (INPUT % dims(1, 3, 8, 8) + 'layer { name: "conv1" type: "Convolution" '
            'bottom: "data" top: "conv1" convolution_param { num_output: 4000000000 '
            'kernel_size: 3 } }')
    err = refused(text)
    assert 'layer "conv1" (Convolution)' in str(err)


def test_convolution_huge_pad_makes_an_absurd_top():
    text = (INPUT % dims(1, 1, 4, 4) + 'layer { name: "conv1" type: "Convolution" '
            'bottom: "data" top: "conv1" convolution_param { num_output: 1 kernel_size: 1 '
            'pad: 2000000000 } }')
    err = refused(text)
    assert 'layer "conv1" (Convolution)' in str(err) and 'blob "conv1"' in str(err)


def test_convolution_huge_kernel_makes_an_absurd_column_buffer(monkeypatch):
    # The top is small (1 x 1 x 501 x 501) but im2col would need 250000 x 251001 values.
    text = (INPUT % dims(1, 1, 1000, 1000) + 'layer { name: "conv1" type: "Convolution" '
            'bottom: "data" top: "conv1" convolution_param { num_output: 1 '
            'kernel_size: 500 } }')
    err = refused(text, "8G", monkeypatch)
    assert 'layer "conv1" (Convolution)' in str(err) and "im2col" in str(err)


def test_dummy_data_shape_huge():
    text = ('layer { name: "dummy" type: "DummyData" top: "x" dummy_data_param { '
            'shape { dim: 100000 dim: 100000 dim: 100000 } } }')
    err = refused(text)
    assert 'layer "dummy" (DummyData)' in str(err)


def test_image_data_batch_size_huge(tmp_path, monkeypatch):
    pil = pytest.importorskip("PIL.Image")
    pil.fromarray(np.zeros((8, 8, 3), np.uint8)).save(str(tmp_path / "a.png"))
    (tmp_path / "list.txt").write_text("a.png 0\n")
    text = ('layer { name: "images" type: "ImageData" top: "data" top: "label" '
            'image_data_param { source: "%s" root_folder: "%s/" batch_size: 4000000000 } }'
            % (tmp_path / "list.txt", tmp_path))
    err = refused(text, "1G", monkeypatch)
    assert 'layer "images" (ImageData)' in str(err) and "4000000000" in str(err)


def test_reshape_layer_with_absurd_dims_is_a_clear_error():
    text = (INPUT % dims(2, 6) + 'layer { name: "r" type: "Reshape" bottom: "data" '
            'top: "r" reshape_param { shape { dim: 1000000000000 dim: -1 } } }')
    with pytest.raises((LayerError, ShapeError), match='"r"'):
        build(text)


def test_running_total_catches_many_moderate_blobs(monkeypatch):
    # Each blob: 100k floats, data + diff = 800 kB, under the 2 MB limit alone;
    # the third one takes the net past it.
    text = INPUT % dims(100, 1000)
    for i in range(4):
        text += ('layer { name: "relu%d" type: "ReLU" bottom: "%s" top: "r%d" }'
                 % (i, "data" if i == 0 else "r%d" % (i - 1), i))
    err = refused(text, "2M", monkeypatch)
    assert 'layer "relu1" (ReLU)' in str(err)
    assert "already holds" in str(err) and err.total == 1600000


def test_net_memory_bytes_counts_data_and_diff(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    text = (INPUT % dims(2, 10) + 'layer { name: "fc" type: "InnerProduct" bottom: "data" '
            'top: "fc" inner_product_param { num_output: 3 } }')
    net = build(text)
    floats = 2 * 10 + 2 * 3 + 3 * 10 + 3  # data, fc, weight, bias
    assert net.memory_bytes == 2 * 4 * floats


def test_runtime_reshape_is_checked_and_leaves_the_blob_intact(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "12M")
    net = build(INPUT % dims(2, 3) + 'layer { name: "relu" type: "ReLU" bottom: "data" '
                'top: "out" }')
    with pytest.raises(ResourceLimitError, match='blob "data"'):
        net.blobs["data"].reshape(10 ** 6, 10 ** 3)
    assert net.blobs["data"].shape == (2, 3)
    net.blobs["data"].reshape(4, 3)  # a sensible reshape still works
    net.reshape()
    assert net.blobs["out"].shape == (4, 3)
    net.blobs["data"].reshape(1000, 1000)  # 8 MB: fits, until the ReLU's top doubles it
    with pytest.raises(ResourceLimitError, match=r'layer "relu" \(ReLU\)'):
        net.reshape()


def test_unlimited_turns_the_check_off(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "unlimited")
    assert limits.memory_limit() is None
    net = build(INPUT % dims(2, 3))
    assert net.memory_bytes == 2 * 4 * 6


def test_lone_blob_checked_against_the_limit(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "1M")
    with pytest.raises(ResourceLimitError, match=r"blob of shape \(1000, 1000\)"):
        Blob((1000, 1000))
    assert Blob((100, 100)).count == 10000


def test_solver_history_counts_against_the_limit(tmp_path, monkeypatch):
    # Net: 2x1000 input + 2x1000 fc + 1000x1000 weight (+ bias), about 8 MB with diffs;
    # Adam's two history copies of the 4 MB parameters take it past 12 MB.
    (tmp_path / "net.prototxt").write_text(
        INPUT % dims(2, 1000) + 'layer { name: "fc" type: "InnerProduct" bottom: "data" '
        'top: "fc" inner_product_param { num_output: 1000 } }')
    (tmp_path / "solver.prototxt").write_text(
        'net: "%s" type: "Adam" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 display: 0'
        % (tmp_path / "net.prototxt"))
    monkeypatch.setenv(limits.ENV_VAR, "12M")
    with pytest.raises(ResourceLimitError, match="Adam solver's history"):
        caffe.get_solver(str(tmp_path / "solver.prototxt"))
    monkeypatch.setenv(limits.ENV_VAR, "20M")
    assert caffe.get_solver(str(tmp_path / "solver.prototxt")).history


def test_shared_params_are_counted_once(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    text = (INPUT % dims(2, 10) + ''.join(
        'layer { name: "fc%d" type: "InnerProduct" bottom: "data" top: "fc%d" '
        'param { name: "w" } param { name: "b" } inner_product_param { num_output: 3 } }'
        % (i, i) for i in range(2)))
    net = build(text)
    # Data and diff of: data, two tops, and one weight and bias between the layers;
    # the two Split tops view data's data (Caffe's ShareData) and hold their diffs.
    blobs = 2 * 10 + 2 * (2 * 3)
    assert net.memory_bytes == 4 * (2 * blobs + 2 * (2 * 10) + 2 * (3 * 10 + 3))
    other = build(text)
    other.share_with(net)  # as a solver's test net: the parameters are net's
    assert other.memory_bytes == 4 * (2 * blobs + 2 * (2 * 10))


def test_check_array_for_other_callers(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "1M")
    assert limits.check_array((10, 10), np.float64) == 800
    with pytest.raises(ResourceLimitError, match=r'layer "l" \(T\): buffer of shape '
                                                 r'\(1000, 1000\) \(float32\)'):
        limits.check_array((1000, 1000), np.float32, "buffer", layer=("l", "T"))
    with pytest.raises(ShapeError, match="buffer"):
        limits.check_array((3, -1), np.float32, "buffer")
