"""The SphereFace descendants' published nets (../shared/nets/<fork folders>): every
net builds in each phase it defines and ``pyfacelayers info`` lists it; the deploy nets
run; the four small training nets of ../shared/fixtures/family-ref/nets reproduce the
forks' forward, backward and 6 SGD iterations; the real NormFace caffemodel's TEST
forward matches. Nets whose layer types are not registered yet skip, naming them."""

import json
import os

import numpy as np
import pytest

from caffe_ref import check_summary
from conftest import NETS, assert_close, shared_path
from pyfacelayers import fork_semantics
from pyfacelayers.fileio.text import read_net
from pyfacelayers.input_swap import DATA_LAYER_TYPES, swap_data_layers
from pyfacelayers.layers import registered_types
from pyfacelayers.net import Net
from pyfacelayers.proto import caffe_pb2
from test_family_schema import fork_prototxts

NET_FILES = [p for p in fork_prototxts() if "solver" not in os.path.basename(p)]
FIXTURES = ("fixtures", "family-ref", "nets")
TOL = 1e-4  # the project's tolerance for whole nets


def image_shape(rel):
    """A small input for the net's data layers: MNIST nets 28x28 grey, faces 112x96."""
    if "NormFace/mnist" in rel or "figure" in rel or "update_two_points" in rel:
        return (2, 1, 28, 28)
    return (2, 3, 112, 96)


# Blobs that a published fragment takes from the trunk it is appended to.
FRAGMENT_INPUTS = {"last_ip_layer": (2, 8), "label": (2,), "res4_3": (2, 16, 7, 6)}


def buildable(rel):
    """The NetParameter with data layers (and a fragment's missing inputs) as Input
    layers, and the phases the net defines."""
    param = read_net(os.path.join(NETS, rel))
    shapes = {}
    for layer in param.layer:
        if layer.type in DATA_LAYER_TYPES:
            shapes[layer.top[0]] = image_shape(rel)
            for top in layer.top[1:]:
                shapes[top] = (2,)
    param = swap_data_layers(param, shapes)
    produced, missing = set(), []
    for layer in param.layer:
        missing += [b for b in layer.bottom if b not in produced and b not in missing]
        produced.update(layer.top)
    if missing:
        inputs = caffe_pb2.LayerParameter(name="fragment_inputs", type="Input", top=missing)
        for name in missing:
            inputs.input_param.shape.add().dim.extend(FRAGMENT_INPUTS[name])
        layers = [inputs] + list(param.layer)
        del param.layer[:]
        param.layer.extend(layers)
    for layer in param.layer:  # small batches: the published deploy batches reach 200
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = min(shape.dim[0], 2)
    phases = sorted({r.phase for l in param.layer for r in l.include if r.HasField("phase")})
    return param, phases or [caffe_pb2.TRAIN, caffe_pb2.TEST]


def skip_unregistered(param, what):
    missing = sorted({l.type for l in param.layer} - set(registered_types()))
    if missing:
        pytest.skip("%s: layer type(s) %s not registered yet" % (what, ", ".join(missing)))


def labels_in_range(net):
    """Labels valid for every classifier (0): the label blobs hold zeros after build."""
    for name, blob in net.blobs.items():
        if "label" in name:
            blob.data[...] = 0


@pytest.mark.parametrize("rel", NET_FILES or ["<no fork nets>"])
def test_every_fork_net_builds_in_each_phase(rel):
    shared_path("nets", rel.split("/")[0]) if rel != "<no fork nets>" else shared_path(
        "nets", "happynear-AMSoftmax")
    param, phases = buildable(rel)
    skip_unregistered(param, rel)
    for phase in phases:
        net = Net(param, phase, seed=0)
        assert len(net.layers) >= 1


@pytest.mark.parametrize("rel", NET_FILES or ["<no fork nets>"])
def test_info_lists_every_fork_net(rel, capsys):
    from pyfacelayers.cli import main
    path = shared_path("nets", rel) if rel != "<no fork nets>" else shared_path(
        "nets", "happynear-AMSoftmax")
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    for layer in read_net(path).layer:
        assert layer.name in out


DEPLOY = [r for r in NET_FILES if "deploy" in r or "example_of_mirror" in r
          or r.endswith("mxnet_to_caffe/face.prototxt")]


@pytest.mark.parametrize("rel", DEPLOY or ["<no fork nets>"])
def test_deploy_nets_run(rel):
    if rel == "<no fork nets>":
        shared_path("nets", "happynear-AMSoftmax")
    param, _ = buildable(rel)
    skip_unregistered(param, rel)
    for layer in param.layer:  # one image: keeps the big nets quick
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = 1
    net = Net(param, caffe_pb2.TEST, seed=0)
    for layer in net.layers:  # untrained BatchNorm statistics (variance 0) blow up
        if layer.type == "BatchNorm":
            layer.blobs[1].data[...] = 1
            layer.blobs[2].data[...] = 1
    rng = np.random.default_rng(0)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.uniform(-1, 1, net.blobs[name].shape)
    out = net.forward()
    for name, value in out.items():
        assert np.all(np.isfinite(value)), name
    if "mirror" in rel and "normalize" in rel or rel.endswith("deploy_mirror.prototxt"):
        feature = next(iter(out.values())).reshape(1, -1)
        assert np.isclose(np.linalg.norm(feature), 1, atol=1e-4)  # ends in Normalize


# -- the four small training nets ----------------------------------------------------

NET_KEYS = ("a_amsoftmax", "b_arcface", "c_normface", "d_amsoftmax_wofn")


def fixture_net(key, dtype):
    folder = shared_path(*(FIXTURES + (key,)))
    param = read_net(os.path.join(folder, key + "_train_input.prototxt"))
    skip_unregistered(param, key)
    with fork_semantics.using("cpu"):  # the fixtures ran the forks' CPU code
        net = Net(param, caffe_pb2.TRAIN, dtype=dtype, seed=0,
                  weights=os.path.join(folder, key + "_init.caffemodel"))
    return folder, net


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("key", NET_KEYS)
def test_net_fixture_forward_backward(key, dtype):
    check_net_fixture_forward_backward(key, dtype)


def check_net_fixture_forward_backward(key, dtype, xp=np):
    """One forward and backward of a family-ref training net against the fixture
    (``xp``: numpy, or cupy for the GPU backend)."""
    from pyfacelayers.backend import to_numpy
    folder, net = fixture_net(key, np.float32 if dtype == "f32" else np.float64)
    if xp is not np:
        net.to_device(xp)
    z = np.load(os.path.join(folder, "%s_fb_%s.npz" % (key, dtype)))
    meta = json.loads(str(z["meta_json"]))
    net.blobs["data"].data[...] = xp.asarray(z["input_data"])
    net.blobs["label"].data[...] = xp.asarray(z["input_label"])
    net.clear_param_diffs()
    loss = net.forward_from_to()
    net.backward_from_to()
    assert np.isclose(loss, meta["forward_loss_returned"], rtol=TOL)
    compared = 0
    for key_name in z.files:
        kind, _, rest = key_name.partition("__")
        if kind == "blob" and rest in net.blobs:
            ours = net.blobs[rest].data
        elif kind == "blobdiff" and rest in net.blobs:
            ours = net.blobs[rest].diff
        elif kind in ("diff", "param") and rest:
            layer, index = rest.rsplit("__", 1)
            blob = net.params[layer][int(index)]
            ours = blob.diff if kind == "diff" else blob.data
        else:
            continue
        expected = z[key_name]
        assert_close(to_numpy(ours).reshape(expected.shape), expected, TOL, key_name)
        compared += 1
    assert compared > 20


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("key", NET_KEYS)
def test_net_fixture_six_sgd_iterations(key, dtype, tmp_path, monkeypatch):
    from pyfacelayers.solvers import get_solver
    folder = shared_path(*(FIXTURES + (key,)))
    skip_unregistered(read_net(os.path.join(folder, key + "_train_input.prototxt")), key)
    z = np.load(os.path.join(folder, "%s_sgd6_%s.npz" % (key, dtype)))
    meta = json.loads(str(z["meta_json"]))
    monkeypatch.chdir(str(tmp_path))
    with fork_semantics.using("cpu"):
        solver = get_solver(os.path.join(folder, key + "_solver.prototxt"),
                            dtype=np.float32 if dtype == "f32" else np.float64)
    solver.net.copy_from(os.path.join(folder, key + "_init.caffemodel"))
    losses = []
    solver.add_iteration_callback(lambda s, loss: losses.append(loss))
    for it in range(6):
        solver.net.blobs["data"].data[...] = z["iter%d_input_data" % it]
        solver.net.blobs["label"].data[...] = z["iter%d_input_label" % it]
        solver.step(1)
        net = solver.net
        for name, blob in zip(net.param_display_names, net.learnable_params):
            prefix = "iter%d_param__%s" % (it, name)
            if prefix + "__sum_sumsq" in z.files:
                check_summary(z, prefix, np.asarray(blob.data), TOL)
    expected = [sum(v for k, v in out.items() if "loss" in k) for out in meta["outputs_per_iter"]]
    assert_close(losses, expected, TOL, "loss per iteration")
    assert solver.iter == 6


# -- the real NormFace caffemodel -----------------------------------------------------

@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_normface_caffemodel_test_forward(dtype):
    folder = shared_path(*(FIXTURES + ("nca_lenet",)))
    param = read_net(os.path.join(folder, "lenet_NCA_nonorm_test_input.prototxt"))
    skip_unregistered(param, "lenet_NCA_nonorm")
    z = np.load(os.path.join(folder, "lenet_NCA_nonorm_test_forward_%s.npz" % dtype))
    net = Net(param, caffe_pb2.TEST, dtype=np.float32 if dtype == "f32" else np.float64,
              weights=shared_path("nets", "happynear-NormFace", "draw", "figure2",
                                  "lenet_iter_20000.caffemodel"))
    net.blobs["data"].data[...] = z["input_data"]
    net.blobs["label"].data[...] = z["input_label"]
    net.forward()
    for key in z.files:
        if key.startswith("blob__") and key[6:] in net.blobs:
            expected = z[key]
            assert_close(np.asarray(net.blobs[key[6:]].data).reshape(expected.shape),
                         expected, TOL, key)
