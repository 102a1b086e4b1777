"""Prefetching data layers (pyfacelayers/layers/_prefetch.py): with 0, 1 or 3 worker
threads, ImageData / Data (LMDB) / HDF5Data give the same batches in the same order with
the same random draws (shuffle, mirror, crop sized from the image header), report the
position of the batch the net reads next (snapshots), resume from a saved position and
rng state exactly, and name the file and list line of a bad image."""

import numpy as np
import pytest

from test_data_layers import (data_layer, hdf5_layer, image_layer, needs_pillow, png_bytes,
                              run, write_h5, write_images, write_lmdb)

from pyfacelayers.errors import LayerError
from pyfacelayers.layers import _prefetch
from pyfacelayers.proto import caffe_pb2

WORKERS = [0, 1, 3]
STEPS = 7


def image_maker(tmp_path):
    write_images(tmp_path, 5, size=(9, 7))
    return lambda: image_layer(tmp_path, extra="transform_param { mirror: true crop_size: 5 "
                               "scale: 0.5 }", params="batch_size: 3 shuffle: true", seed=4)


def image_resize_maker(tmp_path):
    write_images(tmp_path, 4, size=(6, 8))
    return lambda: image_layer(tmp_path, extra="transform_param { mirror: true crop_size: 4 }",
                               params="batch_size: 2 new_height: 7 new_width: 5 rand_skip: 3",
                               seed=2)


def lmdb_maker(tmp_path):
    rng = np.random.default_rng(0)
    datums = []
    for i in range(5):
        rgb = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
        if i % 2:
            datums.append(caffe_pb2.Datum(encoded=True, data=png_bytes(rgb), label=i))
        else:
            datums.append(caffe_pb2.Datum(channels=3, height=8, width=6,
                                          data=rgb.transpose(2, 0, 1).tobytes(), label=i))
    write_lmdb(tmp_path / "db", datums)
    return lambda: data_layer(tmp_path / "db", extra="transform_param { mirror: true "
                              "crop_size: 4 force_color: true }", batch=3, seed=1)


def hdf5_maker(tmp_path):
    for k, rows in enumerate((4, 3, 5)):
        write_h5(tmp_path / ("f%d.h5" % k),
                 data=np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3) + 100 * k,
                 label=np.arange(rows, dtype=np.float32) + 10 * k)
    return lambda: hdf5_layer(tmp_path, ["f0.h5", "f1.h5", "f2.h5"], batch=4, shuffle=True,
                              seed=3)


MAKERS = {"imagedata": image_maker, "imagedata_resize": image_resize_maker,
          "lmdb": lmdb_maker, "hdf5": hdf5_maker}


def run_steps(make, workers, monkeypatch, steps=STEPS):
    monkeypatch.setenv("PYFACELAYERS_DATA_WORKERS", str(workers))
    layer, top = make()
    batches, states = [], []
    for _ in range(steps):
        states.append((layer.get_state(), layer.rng.bit_generator.state))
        batches.append(run(layer, top))
    layer.close_prefetch()
    return batches, states


@needs_pillow
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_any_number_of_workers_gives_the_same_batches_and_states(tmp_path, monkeypatch, kind):
    make = MAKERS[kind](tmp_path)
    inline, inline_states = run_steps(make, 0, monkeypatch)
    # the generator the snapshots save moves with the batches read (every kind draws)
    assert len({repr(rng) for _, rng in inline_states}) > 1
    for workers in WORKERS[1:]:
        batches, states = run_steps(make, workers, monkeypatch)
        assert states == inline_states, workers
        for a, b in zip(batches, inline):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)


@needs_pillow
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_saved_position_and_rng_resume_exactly(tmp_path, monkeypatch, kind):
    make = MAKERS[kind](tmp_path)
    expected, states = run_steps(make, 0, monkeypatch)
    monkeypatch.setenv("PYFACELAYERS_DATA_WORKERS", "2")
    layer, top = make()
    run(layer, top)  # batches are planned ahead of the one restored below
    state, rng_state = states[4]
    layer.set_state(state)
    layer.rng.bit_generator.state = rng_state
    for k in range(4, STEPS):
        for x, y in zip(run(layer, top), expected[k]):
            np.testing.assert_array_equal(x, y)
    # an rng restored alone (the solver restores it after set_state) also re-plans
    layer.set_state(states[2][0])
    layer.rng.bit_generator.state = states[2][1]
    for x, y in zip(run(layer, top), expected[2]):
        np.testing.assert_array_equal(x, y)
    layer.close_prefetch()


@needs_pillow
@pytest.mark.parametrize("workers", WORKERS)
def test_a_bad_image_names_the_file_and_line_and_the_layer_stays_before_it(
        tmp_path, monkeypatch, workers):
    monkeypatch.setenv("PYFACELAYERS_DATA_WORKERS", str(workers))
    write_images(tmp_path, 3)
    with open(tmp_path / "list.txt", "a") as handle:
        handle.write("broken.png 4\n")
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    layer, top = image_layer(tmp_path, params="batch_size: 2")
    run(layer, top)
    before = layer.get_state()
    with pytest.raises(LayerError, match=r'layer "img".*could not decode.*broken\.png.*line 4'):
        run(layer, top)
    assert layer.get_state() == before == {"line_id": 2}
    layer.close_prefetch()


@needs_pillow
def test_a_crop_needs_the_image_header_only(tmp_path, monkeypatch):
    """Random crop offsets depend on the image size: the planner reads it from the header
    on the main thread; a missing file is reported from there, with its line."""
    monkeypatch.setenv("PYFACELAYERS_DATA_WORKERS", "1")
    write_images(tmp_path, 2, size=(9, 7))
    with open(tmp_path / "list.txt", "a") as handle:
        handle.write("gone.png 1\n")
    layer, top = image_layer(tmp_path, extra="transform_param { crop_size: 3 }",
                             params="batch_size: 3")
    with pytest.raises(LayerError, match=r"not found.*gone\.png \(line 3"):
        run(layer, top)
    layer.close_prefetch()


def test_bad_worker_count_is_refused(monkeypatch):
    for bad in ("two", "-1"):
        monkeypatch.setenv("PYFACELAYERS_DATA_WORKERS", bad)
        with pytest.raises(ValueError, match="PYFACELAYERS_DATA_WORKERS"):
            _prefetch.worker_count()
    monkeypatch.delenv("PYFACELAYERS_DATA_WORKERS")
    assert _prefetch.worker_count() == _prefetch.DEFAULT_WORKERS
