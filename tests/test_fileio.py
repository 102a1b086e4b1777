"""File I/O: prototxt and caffemodel reading/writing, legacy upgrades, bad files."""

import glob
import lzma
import os
import zlib

import numpy as np
import pytest
from conftest import NETS, shared_path

from pyfacelayers.errors import FormatError
from pyfacelayers.fileio import (array_to_blob, blob_to_array, legacy_shape_matches,
                                 read_binaryproto, read_caffemodel, read_net, read_solver,
                                 read_solverstate, write_binaryproto, write_caffemodel,
                                 write_prototxt)
from pyfacelayers.proto import caffe_pb2

ALL_PROTOTXTS = sorted(glob.glob(os.path.join(NETS, "*", "*.prototxt")))

UPGRADE_CASES = [
    ("caffe-v1/examples_mnist_lenet.prototxt", "examples_mnist_lenet.prototxt"),
    ("caffe-v1/examples_mnist_lenet_train_test.prototxt",
     "examples_mnist_lenet_train_test.prototxt"),
    ("caffe-v1/examples_cifar10_cifar10_quick_train_test.prototxt",
     "examples_cifar10_cifar10_quick_train_test.prototxt"),
    ("caffe-v1/models_bvlc_reference_caffenet_deploy.prototxt",
     "models_bvlc_reference_caffenet_deploy.prototxt"),
    ("angular-triplet/face_deploy.prototxt", "face_deploy.prototxt"),
    ("sphereface/sphereface_deploy.prototxt", "sphereface_deploy.prototxt"),
]


def _is_solver(path):
    return "solver" in os.path.basename(path)


def test_every_shared_prototxt_parses():
    shared_path("nets")
    assert len(ALL_PROTOTXTS) >= 30
    for path in ALL_PROTOTXTS:
        if _is_solver(path):
            solver = read_solver(path)
            assert not solver.HasField("solver_type"), path
        else:
            net = read_net(path)
            assert len(net.layer) > 0 and len(net.layers) == 0, path
            assert all(layer.type for layer in net.layer), path


@pytest.mark.parametrize("legacy,expected", UPGRADE_CASES)
def test_upgrade_matches_caffe_upgrade_tool(legacy, expected):
    got = read_net(shared_path("nets", *legacy.split("/")))
    want = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse(open(shared_path("fixtures", "caffe-ref", "upgrade", expected)).read(),
                      want)
    assert len(got.layer) == len(want.layer)
    for a, b in zip(got.layer, want.layer):
        assert a == b, "layer %s differs:\n%s\nvs\n%s" % (b.name, a, b)
    assert got == want


def test_v1_solver_type_upgrades_to_type_string():
    solver = read_solver("net: 'x.prototxt'\nsolver_type: ADAGRAD\nbase_lr: 0.1")
    assert solver.type == "AdaGrad" and not solver.HasField("solver_type")
    with pytest.raises(FormatError, match="both"):
        read_solver("solver_type: ADAM\ntype: 'Adam'")


@pytest.mark.parametrize("path", [p for p in ALL_PROTOTXTS if not _is_solver(p)][:12])
def test_prototxt_round_trip(tmp_path, path):
    net = read_net(path)
    out = tmp_path / "net.prototxt"
    write_prototxt(out, net)
    assert read_net(str(out)) == net


def test_caffemodel_round_trip(tmp_path):
    original = shared_path("fixtures", "caffe-ref", "B1_small", "B1_small.caffemodel")
    net = read_caffemodel(original)
    out = tmp_path / "copy.caffemodel"
    write_caffemodel(out, net)
    again = read_caffemodel(str(out))
    assert again == net
    assert open(original, "rb").read() == out.read_bytes()  # current format: byte-identical


@pytest.mark.parametrize("case,num_layers", [("lenet", 8), ("cifar10_quick", 13)])
def test_legacy_v1_caffemodel_reads_and_maps_shapes(case, num_layers):
    folder = shared_path("fixtures", "caffe-ref", "legacy_v1")
    net = read_caffemodel(os.path.join(folder, "%s_v1.caffemodel" % case))
    assert len(net.layer) == num_layers and not len(net.layers)
    upgraded = caffe_pb2.NetParameter.FromString(
        lzma.decompress(open(os.path.join(folder, "%s_v2_upgraded.caffemodel.xz" % case),
                             "rb").read()))
    assert net == upgraded  # exactly what Caffe's upgrade_net_proto_binary made
    ip1 = next(layer for layer in net.layer if layer.name == "ip1")
    weight, bias = ip1.blobs
    n, k = weight.height, weight.width
    assert (weight.num, weight.channels) == (1, 1)
    assert legacy_shape_matches(weight, (n, k))
    assert not legacy_shape_matches(weight, (k, n))
    assert not legacy_shape_matches(weight, (n, k, 1, 1))
    assert legacy_shape_matches(bias, (n,)) and not legacy_shape_matches(bias, (n, 1))
    assert blob_to_array(weight).reshape(n, k).dtype == np.float32


def test_new_style_shape_must_match_exactly():
    blob = array_to_blob(np.zeros((1, 1, 5, 4), np.float32))
    assert not legacy_shape_matches(blob, (5, 4))
    assert legacy_shape_matches(blob, (1, 1, 5, 4))


def test_binaryproto_round_trip(tmp_path):
    mean = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    write_binaryproto(tmp_path / "mean.binaryproto", mean)
    np.testing.assert_array_equal(read_binaryproto(str(tmp_path / "mean.binaryproto")), mean)
    double = mean.astype(np.float64)
    blob = array_to_blob(double, legacy_shape=True)
    assert (blob.num, blob.channels) == (1, 3) and len(blob.double_data) == double.size
    np.testing.assert_array_equal(blob_to_array(blob).reshape(double.shape), double)


def test_solverstate_reads_caffe_snapshot():
    state = read_solverstate(shared_path("fixtures", "caffe-ref", "B2_solver",
                                         "b2_solver_iter_6.solverstate"))
    assert state.iter == 6 and state.current_step == 2
    assert state.learned_net == "b2_solver_iter_6.caffemodel" and len(state.history) > 0


# -- bad input ---------------------------------------------------------------------

def test_syntax_error_gives_file_line_column(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('name: "x"\nlayer {\n  name: "a"\n  type: "ReLU"\n  bogus_field: 3\n}\n')
    with pytest.raises(FormatError) as info:
        read_net(str(bad))
    assert info.value.path == str(bad) and info.value.line == 5
    assert info.value.column is not None and "bogus_field" in str(info.value)
    bad.write_text('layer {\n  name: "a"\n')
    with pytest.raises(FormatError, match=r"bad.prototxt:\d+"):
        read_net(str(bad))


def test_missing_file_names_its_path(tmp_path):
    missing = str(tmp_path / "nope.prototxt")
    with pytest.raises(FileNotFoundError, match="nope.prototxt"):
        read_net(missing)
    with pytest.raises(FileNotFoundError, match="nope.caffemodel"):
        read_caffemodel(str(tmp_path / "nope.caffemodel"))


def test_caffemodel_given_as_prototxt_and_reverse():
    model = shared_path("fixtures", "caffe-ref", "B1_small", "B1_small.caffemodel")
    with pytest.raises(FormatError, match="binary file"):
        read_net(model)
    with pytest.raises(FormatError, match="text file"):
        read_caffemodel(shared_path("nets", "sphereface", "sphereface_deploy.prototxt"))


def test_truncated_and_corrupt_caffemodel(tmp_path):
    raw = open(shared_path("fixtures", "caffe-ref", "B1_small", "B1_small.caffemodel"),
               "rb").read()
    for name, data in [("truncated", raw[:len(raw) // 2 + 7]), ("corrupt", b"\xff" * 64),
                       ("empty", b"")]:
        path = tmp_path / (name + ".caffemodel")
        path.write_bytes(data)
        with pytest.raises(FormatError, match=name + ".caffemodel"):
            read_caffemodel(str(path))


def test_v1_layer_type_without_equivalent():
    text = 'layers { name: "odd" type: NONE bottom: "a" top: "b" }'
    with pytest.raises(FormatError, match='"odd".*no current equivalent'):
        read_net(text)


def test_input_dim_count_checked():
    with pytest.raises(FormatError, match="input_dim"):
        read_net('input: "data"\ninput_dim: 1\ninput_dim: 3\nlayer { name: "r" type: "ReLU" }')


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    import pyfacelayers.fileio.atomic as atomic
    target = tmp_path / "model.caffemodel"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_caffemodel(target, caffe_pb2.NetParameter(name="x"))
    assert os.listdir(tmp_path) == []


def _protobuf_blob(array, diff=None, legacy=False):
    """BlobProto filled value by value through protobuf (the reference encoding)."""
    array = np.asarray(array)
    blob = caffe_pb2.BlobProto()
    if legacy:
        blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - array.ndim) + array.shape
    else:
        blob.shape.dim.extend(int(d) for d in array.shape)
    single = array.dtype != np.float64
    values = blob.data if single else blob.double_data
    values.extend(array.astype(np.float32 if single else np.float64).ravel().tolist())
    if diff is not None:
        diffs = blob.diff if single else blob.double_diff
        diffs.extend(np.asarray(diff, np.float32 if single else np.float64).ravel().tolist())
    return blob


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int64])
def test_packed_blob_encoder_equals_protobuf_bytes(dtype):
    from pyfacelayers.fileio.blobs import encode_blob
    rng = np.random.default_rng(4)
    for shape in [(), (0,), (1,), (3, 0, 2), (7, 5), (2, 3, 4, 5), (2, 1, 1, 3, 2), (40000,)]:
        for legacy in (False, True):
            if legacy and len(shape) > 4:
                with pytest.raises(ValueError, match="at most 4 axes"):
                    encode_blob(np.zeros(shape, dtype), legacy_shape=True)
                continue
            for with_diff in (False, True):
                a = (rng.standard_normal(shape) * 100).astype(dtype)
                if a.ndim == 2:
                    a = a.T  # not C-contiguous
                d = rng.standard_normal(a.shape) if with_diff else None
                want = _protobuf_blob(a, d, legacy).SerializeToString()
                assert encode_blob(a, d, legacy) == want, (shape, legacy, with_diff)
                assert array_to_blob(a, d, legacy_shape=legacy).SerializeToString() == want
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], np.float32)
    assert encode_blob(special) == _protobuf_blob(special).SerializeToString()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_net_save_bytes_equal_protobuf_serialization(tmp_path, dtype):
    import pyfacelayers as caffe
    from pyfacelayers.net import Net
    text = """name: "n" input: "data" input_shape { dim: 2 dim: 3 dim: 5 dim: 5 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" }
                      bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
"""
    (tmp_path / "n.prototxt").write_text(text)
    net = Net(read_net(str(tmp_path / "n.prototxt")), caffe.TRAIN, dtype=dtype)
    for blobs in net.params.values():
        for b in blobs:
            b.diff[...] = np.random.default_rng(1).standard_normal(b.diff.shape)
    for write_diff in (False, True):
        size, crc = net.save(str(tmp_path / "w.caffemodel"), write_diff=write_diff)
        want = net.to_proto(write_diff).SerializeToString()
        got = (tmp_path / "w.caffemodel").read_bytes()
        assert got == want and size == len(want) and crc == zlib.crc32(want)


def test_solverstate_history_bytes_equal_protobuf_serialization(tmp_path):
    from pyfacelayers.solvers.snapshot import write_state
    history = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(0, np.float32),
               np.linspace(0, 1, 5)]
    write_state(str(tmp_path / "s.solverstate"), 9, "w.caffemodel", 0, history)
    want = caffe_pb2.SolverState(iter=9, learned_net="w.caffemodel", current_step=0)
    for h in history:
        want.history.add().CopyFrom(_protobuf_blob(h))
    assert (tmp_path / "s.solverstate").read_bytes() == want.SerializeToString()


def test_fixture_net_save_bytes_equal_protobuf_serialization(tmp_path):
    import pyfacelayers as caffe
    folder = shared_path("fixtures", "caffe-ref", "B1_small")
    net = caffe.Net(os.path.join(folder, "B1_small_train.prototxt"),
                    os.path.join(folder, "B1_small.caffemodel"), caffe.TRAIN)
    net.save(str(tmp_path / "w.caffemodel"))
    assert (tmp_path / "w.caffemodel").read_bytes() == net.to_proto().SerializeToString()


# -- permissions of written files ----------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fchmod"), reason="no POSIX permissions here")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_open_s_permissions(tmp_path, umask):
    """A new file gets 0666 less the umask (as open() and Caffe's ofstream), not the
    0600 of the temporary file; a file that exists keeps its own mode."""
    from pyfacelayers.fileio.atomic import atomic_write
    previous = os.umask(umask)
    try:
        new = tmp_path / "new.caffemodel"
        atomic_write(new, b"weights")
        assert new.stat().st_mode & 0o777 == 0o666 & ~umask
        existing = tmp_path / "existing.prototxt"
        existing.write_text("old")
        os.chmod(existing, 0o640)
        atomic_write(existing, "new")
        assert existing.read_text() == "new" and existing.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)
