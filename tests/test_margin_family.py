"""The margin-family layers (LabelSpecificAdd, LabelSpecificRescale, LabelSpecificMargin,
CosinAddm, CombinedMargin, AdaCosAddmScale, GlobalLSEMargin, FocalLoss and the Accuracy /
SoftmaxWithLoss extensions) against the golden data made by the forks' own CPU code
(``../shared/fixtures/family-ref/layers``), with ``PYFACELAYERS_FORK_SEMANTICS=cpu``; the
default GPU semantics against float64 references of the spec written here; edge rows,
TRAIN/TEST, stateful steps, snapshots of the counters, and the errors.
"""

import glob
import json
import math
import os

import numpy as np
import pytest
from google.protobuf import text_format

from conftest import SHARED, assert_close, shared_path

import pyfacelayers as caffe
from pyfacelayers.blob import Blob
from pyfacelayers.errors import LayerError
from pyfacelayers.layers import create_layer
from pyfacelayers.proto import caffe_pb2

TOL = {"float32": 1e-5, "float64": 1e-10}
DTYPES = {"float32": np.float32, "float64": np.float64}
LAYERS = os.path.join(SHARED, "fixtures", "family-ref", "layers")
MY_TYPES = ("LabelSpecificAdd", "LabelSpecificRescale", "LabelSpecificMargin", "CosinAddm",
            "CombinedMargin", "AdaCosAddmScale", "Accuracy", "SoftmaxWithLoss", "FocalLoss")


def _cases():
    names = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(LAYERS, "f32", "*.npz")))
    return [n for n in names if n.split("__")[0] in MY_TYPES]


CASES = _cases()


def load_case(case, dt):
    path = shared_path("fixtures", "family-ref", "layers", "f32" if dt == "float32" else "f64",
                       case + ".npz")
    z = np.load(path)
    return z, json.loads(str(z["meta_json"]))


def run_fixture_net(z, meta, dtype):
    """Replay a fixture case as its harness did: one Net, per step set the inputs, forward,
    seed the top diffs (and poison bottom diffs), backward. Yields (step, net)."""
    param = caffe_pb2.NetParameter()
    text_format.Merge(meta["net_prototxt"], param)
    param.force_backward = True
    phase = caffe.TRAIN if meta["phase"] == "TRAIN" else caffe.TEST
    net = caffe.Net(param, phase, dtype=dtype)
    for step in range(meta["steps"]):
        for name in meta["inputs"]:
            net.blobs[name].data[...] = z["step%d_in__%s" % (step, name)]
        net.forward()
        for key in z.files:
            prefix = "step%d_topdiff__" % step
            if key.startswith(prefix):
                net.blobs[key[len(prefix):]].diff[...] = z[key]
        for name, value in meta.get("poison_bottom_diff_before_backward", {}).items():
            net.blobs[name].diff[...] = value
        if meta.get("backward", True) and meta["layer_type"] != "Accuracy":
            net.backward()
        yield step, net


def _label_blobs(meta):
    return {n for n, spec in meta["inputs"].items() if spec.get("kind") == "label"} | {"label"}


def _same(actual, expected, tol, what):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64).reshape(actual.shape)
    bad_a, bad_e = ~np.isfinite(actual), ~np.isfinite(expected)
    assert np.array_equal(bad_a, bad_e), "%s: NaN/inf positions differ" % what
    assert np.array_equal(actual[bad_a], expected[bad_e], equal_nan=True), what
    assert_close(actual[~bad_a], expected[~bad_e], tol, what)


@pytest.fixture
def cpu_semantics(monkeypatch):
    monkeypatch.setenv("PYFACELAYERS_FORK_SEMANTICS", "cpu")


@pytest.mark.parametrize("dt", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_fixture_cpu_semantics(case, dt, cpu_semantics):
    z, meta = load_case(case, dt)
    tol = TOL[dt]
    labels = _label_blobs(meta)
    inputs = set(meta["inputs"])
    layer = caffe_pb2.NetParameter()
    text_format.Merge(meta["layer_prototxt"], layer)
    tops = set(layer.layer[0].top)
    for step, net in run_fixture_net(z, meta, DTYPES[dt]):
        for key in z.files:
            head = "step%d_" % step
            if not key.startswith(head):
                continue
            kind, _, name = key[len(head):].partition("__")
            what = "%s %s step %d %s" % (case, dt, step, key)
            if kind == "data" and (name in tops or name not in inputs):
                _same(net.blobs[name].data, z[key], tol, what)
            elif kind == "diff" and name in inputs and name not in labels and meta["backward"] \
                    and meta["layer_type"] != "Accuracy":
                _same(net.blobs[name].diff, z[key], tol, what)
            elif kind == "param":
                layer, _, index = name.partition("__")
                _same(net.params[layer][int(index)].data, z[key], tol, what)
