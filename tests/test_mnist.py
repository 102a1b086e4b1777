"""MNIST's IDX files (pyfacelayers.fileio.idx, pyfacelayers.mnist) and
``pyfacelayers demo --mnist DIR`` on a tiny MNIST-like set the test writes."""

import gzip
import os
import re
import struct

import numpy as np
import pytest

from pyfacelayers import cli, demo
from pyfacelayers.errors import FormatError
from pyfacelayers.fileio.idx import read_idx, write_idx
from pyfacelayers.mnist import load_mnist
from pyfacelayers.proto import caffe_pb2


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(str(tmp_path / name), array)
    back = read_idx(str(tmp_path / name))
    assert back.dtype == array.dtype and np.array_equal(back, array)


def test_idx_layout_is_big_endian_as_published(tmp_path):
    # MNIST's label file: magic 0x00000801, count, then one byte per label.
    path = tmp_path / "labels"
    path.write_bytes(struct.pack(">II", 0x801, 3) + bytes([7, 2, 1]))
    assert read_idx(str(path)).tolist() == [7, 2, 1]
    path.write_bytes(struct.pack(">IIII", 0x0B02, 1, 2, 0) + struct.pack(">h", -2))
    with pytest.raises(FormatError):  # sizes (1, 2) need 4 bytes: truncated
        read_idx(str(path))
    path.write_bytes(struct.pack(">III", 0x0B02, 1, 2) + struct.pack(">hh", -2, 258))
    assert read_idx(str(path)).tolist() == [[-2, 258]]


def _bad(tmp_path, data, name="train-images-idx3-ubyte", compress=False):
    path = tmp_path / (name + (".gz" if compress else ""))
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(FormatError) as info:
        read_idx(str(path))
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("compress", [False, True])
def test_bad_idx_files_say_what_and_where(tmp_path, compress):
    header = struct.pack(">IIII", 0x803, 2, 28, 28)
    good = header + bytes(2 * 28 * 28)
    assert "magic number 0x89504e47" in _bad(tmp_path, b"\x89PNG\r\n\x1a\n" + good, compress=compress)
    assert "magic number" in _bad(tmp_path, struct.pack(">I", 0x0A03) + good[4:], compress=compress)
    assert "magic number" in _bad(tmp_path, struct.pack(">I", 0x800) + good[4:], compress=compress)
    assert "truncated" in _bad(tmp_path, b"\x00\x00", compress=compress)
    assert "truncated in the header" in _bad(tmp_path, header[:9], compress=compress)
    msg = _bad(tmp_path, good[:-10], compress=compress)
    assert "truncated" in msg and "1568" in msg
    assert "more bytes" in _bad(tmp_path, good + b"\x00", compress=compress)


def test_absurd_sizes_are_refused_before_reading(tmp_path):
    # 4 billion by 4 billion images in a .gz: the size cannot be checked against the
    # file, so the memory limit refuses it before anything is read.
    data = struct.pack(">IIII", 0x803, 1, 0xFFFFFFFF, 0xFFFFFFFF)
    msg = _bad(tmp_path, data, compress=True)
    assert "sizes" in msg and "memory limit" in msg


def test_not_gzip_with_gz_name(tmp_path):
    assert "cannot read" in _bad(tmp_path, b"plain bytes, not gzip", name="x.gz")


def write_mnist(directory, n_train=40, n_test=20, compress=(True, True, False, False),
                seed=0, side=28):
    """A tiny MNIST-like set: class c is a bright block at a place of its own, plus
    noise (learnable in a few iterations)."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    arrays = []
    for n in (n_train, n_test):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 40, size=(n, side, side)).astype(np.uint8)
        for i, c in enumerate(labels):
            row, col = divmod(int(c), 4)
            images[i, 3 + row * 7:9 + row * 7, 2 + col * 6:7 + col * 6] = 255
        arrays += [images, labels]
    for name, array, gz in zip(names, arrays, compress):
        write_idx(os.path.join(directory, name + (".gz" if gz else "")), array)
    return arrays


def test_load_mnist_reads_the_four_files(tmp_path):
    images, labels, test_images, test_labels = write_mnist(str(tmp_path))
    x_train, y_train, x_test, y_test = load_mnist(str(tmp_path))
    assert x_train.shape == (40, 1, 28, 28) and x_train.dtype == np.float32
    assert x_test.shape == (20, 1, 28, 28)
    assert np.array_equal(x_train[:, 0], images / np.float32(255))
    assert y_train.dtype == np.float32 and np.array_equal(y_train, labels)
    assert np.array_equal(y_test, test_labels)


def test_load_mnist_finds_the_dotted_spelling(tmp_path):
    write_mnist(str(tmp_path), compress=(False,) * 4)
    os.rename(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-images.idx3-ubyte")
    assert load_mnist(str(tmp_path))[0].shape == (40, 1, 28, 28)


def test_load_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_mnist(str(tmp_path / "nowhere"))
    write_mnist(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(str(tmp_path))
    # Wrong image size: 27x28.
    write_mnist(str(tmp_path), side=27)
    with pytest.raises(FormatError, match=r"train-images-idx3-ubyte.gz.*\(N, 28, 28\)"):
        load_mnist(str(tmp_path))
    # Labels that do not match the images in count, shape or value.
    write_mnist(str(tmp_path))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros(39, np.uint8))
    with pytest.raises(FormatError, match="train-labels-idx1-ubyte.gz: 39 labels for the 40"):
        load_mnist(str(tmp_path))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros((40, 1), np.uint8))
    with pytest.raises(FormatError, match=r"labels: uint8 of shape \(N,\)"):
        load_mnist(str(tmp_path))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.full(40, 10, np.uint8))
    with pytest.raises(FormatError, match="label 10 at item 0"):
        load_mnist(str(tmp_path))


def test_mnist_nets_are_each_method_head_on_the_28x28_body():
    for method in demo.METHODS:
        digits = demo.net_param(method, 2, 17)
        mnist = demo.net_param(method, 3, 20, demo.MNIST)
        names = [layer.name for layer in mnist.layer]
        head = lambda p: [l.SerializeToString() for l in  # noqa: E731
                          p.layer[[x.name for x in p.layer].index("feature") + 1:]]
        assert head(mnist) == head(digits), method.key
        assert "conv3" in names and "conv3" not in [l.name for l in digits.layer]
        data = [l for l in mnist.layer if l.type == "MemoryData"]
        assert [(l.memory_data_param.height, l.memory_data_param.width) for l in data] == \
            [(28, 28), (28, 28)]
        assert data[1].include[0].phase == caffe_pb2.TEST
        assert data[1].memory_data_param.batch_size == 20
        feature = [l for l in mnist.layer if l.name == "feature"][0]
        assert feature.inner_product_param.num_output == 3
        assert mnist.name.startswith("mnist_")


def test_test_batch_divides_the_test_set():
    assert demo.test_batch_size(10000, 500) == 500
    assert demo.test_batch_size(360, 1000) == 360
    assert demo.test_batch_size(21, 500) == 21
    assert demo.test_batch_size(1001, 500) == 143  # 7 * 11 * 13
    assert demo.test_batch_size(13, 5) == 1


def _need_matplotlib():
    pytest.importorskip("matplotlib", reason="the demo needs matplotlib (pip install "
                                             "'pyfacelayers[demo]')")


def test_demo_mnist_prints_the_table_with_the_published_figures(tmp_path, capsys,
                                                                 monkeypatch):
    _need_matplotlib()
    write_mnist(str(tmp_path / "mnist"), n_train=64, n_test=30)
    # Small pieces of the training stream, so feeding in pieces is exercised.
    monkeypatch.setattr(demo, "STREAM_BYTES", 64 * 28 * 28 * 4 * 2)
    out = tmp_path / "out"
    rc = cli.main(["demo", "--mnist", str(tmp_path / "mnist"), "--iters", "5", "--quiet",
                   "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.out.startswith("MNIST: 64 train, 30 test images (28x28)")
    for title, published in (("softmax", "97.75%"), ("modified softmax", "98.47%"),
                             ("A-Softmax", "98.96%")):
        row = [line for line in captured.out.splitlines() if line.startswith(title)][0]
        accuracy = float(re.search(r"([\d.]+)%", row).group(1))
        assert 0 <= accuracy <= 100 and row.endswith(published), row
    for name in ("features_mnist_2d.png", "training_mnist_2d.png", "results_mnist_2d.txt"):
        assert (out / name).is_file(), name
    assert "mnist_asoftmax_2d_net.prototxt" in os.listdir(out / "nets")


def test_training_in_pieces_learns_on_mnist_like_data(tmp_path, monkeypatch):
    _need_matplotlib()
    data = load_mnist_like(tmp_path)
    monkeypatch.setattr(demo, "STREAM_BYTES", 64 * 28 * 28 * 4 * 3)  # 3 iterations a piece
    run = demo.train_one(demo.METHODS[0], data, 2, 30, str(tmp_path / "r"), quiet=True,
                         dataset=demo.MNIST)
    assert len(run.losses) == 30 and run.features.shape == (30, 2)
    assert np.mean(run.losses[-5:]) < 0.8 * np.mean(run.losses[:5])


def load_mnist_like(tmp_path):
    write_mnist(str(tmp_path / "m"), n_train=200, n_test=30)
    return load_mnist(str(tmp_path / "m"))


def test_demo_mnist_bad_folder_is_a_message(tmp_path, capsys):
    _need_matplotlib()
    write_mnist(str(tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")
    rc = cli.main(["demo", "--mnist", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "t10k-images-idx3-ubyte" in err and "truncated" in err
    assert not (tmp_path / "o").exists()  # refused before anything was written
