"""Whole nets against Caffe's golden outputs (fixture sets B1, B1_small, B3, legacy_v1).
Tolerance: 1e-4 of the array norm for float32 nets (whole-net standard), 1e-9 for the
float64 net."""

import os

import numpy as np
import pytest
from caffe_ref import check_summary, load, portable_labels, portable_values, set_recipe_weights
from conftest import assert_close, shared_path

import pyfacelayers as caffe

F32_TOL, F64_TOL = 1e-4, 1e-9


def _run_train_fixture(folder, prototxt, npz, dtype, weights=None):
    z, meta = load(shared_path("fixtures", "caffe-ref", folder, npz))
    net = caffe.Net(shared_path("fixtures", "caffe-ref", folder, prototxt), caffe.TRAIN,
                    dtype=dtype, seed=0)
    if weights:
        net.copy_from(shared_path("fixtures", "caffe-ref", folder, weights))
    else:
        set_recipe_weights(net, meta["param_recipe"])
    recipe = meta["input_recipe"]
    data_shape = net.blobs["data"].shape
    data = portable_values(data_shape, recipe["data"]["seed"], recipe["data"]["scale"])
    np.testing.assert_array_equal(data, z["input_data"])
    label = portable_labels(data_shape[0], recipe["label"]["seed"], recipe["label"]["N"])
    np.testing.assert_array_equal(label, z["input_label"])
    net.blobs["data"].data[...] = data
    net.blobs["label"].data[...] = label
    net.clear_param_diffs()
    net.forward()
    fc6_after_forward = net.params["fc6"][0].data.copy()
    net.backward()
    return z, meta, net, fc6_after_forward


@pytest.mark.parametrize("dtype,npz,tol", [(np.float32, "B1_small_f32.npz", F32_TOL),
                                           (np.float64, "B1_small_f64.npz", F64_TOL)])
def test_b1_small_matches_caffe(dtype, npz, tol):
    z, meta, net, fc6 = _run_train_fixture("B1_small", "B1_small_train.prototxt", npz, dtype,
                                           weights="B1_small.caffemodel")
    for name in ("fc5", "fc6", "lambda", "softmax_loss"):
        assert_close(net.blobs[name].data, z["out__" + name].reshape(net.blobs[name].shape),
                     tol, name)
    assert_close(fc6, z["param_after_forward__fc6__0"], tol, "fc6 weight after forward")
    assert_close(net.blobs["data"].diff, z["data_diff"], tol, "data diff")
    checked = 0
    for key in z.files:
        parts = key.split("__")
        if key.startswith("diff__") and len(parts) == 3:
            layer, index = parts[1], int(parts[2])
            assert_close(net.params[layer][index].diff, z[key], tol, key)
            checked += 1
        elif key.startswith(("blob__", "blobdiff__")) and len(parts) == 2:
            blob = net.blobs[parts[1]]
            assert_close(blob.data if key.startswith("blob__") else blob.diff, z[key], tol, key)
    assert checked == len(net.learnable_params) == 63 - 0 or checked == len(net.learnable_params)


def test_b1_sphereface20_summaries_match():
    z, meta, net, fc6 = _run_train_fixture("B1", "B1_sphereface20_train_input.prototxt",
                                           "B1_sphereface20_train_f32.npz", np.float32)
    for name in ("fc5", "fc6", "lambda", "softmax_loss"):
        assert_close(net.blobs[name].data, z["out__" + name].reshape(net.blobs[name].shape),
                     F32_TOL, name)
    assert_close(fc6, z["param_after_forward__fc6__0"], F32_TOL, "fc6 after forward")
    assert_close(net.blobs["data"].diff, z["data_diff"], F32_TOL, "data diff")
    prefixes = {k.rsplit("__", 1)[0] for k in z.files if k.endswith("__sum_sumsq")}
    for prefix in sorted(prefixes):
        kind, rest = prefix.split("__", 1)
        if kind == "blob":
            check_summary(z, prefix, net.blobs[rest].data, F32_TOL)
        elif kind == "blobdiff":
            check_summary(z, prefix, net.blobs[rest].diff, F32_TOL)
        elif kind == "diff":
            layer, index = rest.split("__")
            check_summary(z, prefix, net.params[layer][int(index)].diff, F32_TOL)


B3_CASES = [
    ("B3_sphereface20_deploy.npz", ("sphereface", "sphereface_deploy.prototxt")),
    ("B3_sphereface64_deploy.npz", ("sphereface", "sphereface_64_deploy.prototxt")),
    ("B3_angular_triplet_face_deploy.npz", ("angular-triplet", "face_deploy.prototxt")),
]


@pytest.mark.parametrize("npz,net_path", B3_CASES)
def test_b3_deploy_features_match(npz, net_path):
    z, meta = load(shared_path("fixtures", "caffe-ref", "B3_deploy", npz))
    net = caffe.Net(shared_path("nets", *net_path), caffe.TEST, seed=0)
    set_recipe_weights(net, meta["param_recipe"])
    recipe = meta["input_recipe"]
    data = portable_values(recipe["shape"], recipe["seed"], recipe["scale"])
    np.testing.assert_array_equal(data, z["input_data"])
    out = net.forward(data=data)
    assert_close(out["fc5"], z["out__fc5"], F32_TOL, "fc5")
    for key in z.files:
        if key.startswith("blob__") and key.endswith("__sum_sumsq"):
            name = key[len("blob__"):-len("__sum_sumsq")]
            check_summary(z, "blob__" + name, net.blobs[name].data, F32_TOL)


@pytest.mark.parametrize("case", ["lenet", "cifar10_quick"])
def test_legacy_v1_caffemodels_reproduce_caffe_test_outputs(case):
    folder = shared_path("fixtures", "caffe-ref", "legacy_v1")
    z, meta = load(os.path.join(folder, "%s_forward_f32.npz" % case))
    net = caffe.Net(os.path.join(folder, "%s_test_input.prototxt" % case),
                    os.path.join(folder, "%s_v1.caffemodel" % case), caffe.TEST, seed=0)
    if case == "lenet":
        inputs = {"data": z["input_data"]}
    else:
        recipe = meta["input_recipe"]
        data = portable_values(net.blobs["data"].shape, recipe["data"]["seed"],
                               recipe["data"]["scale"])
        np.testing.assert_array_equal(data[:1], z["input_data_sample0"])
        inputs = {"data": data, "label": z["input_label"]}
    out = net.forward(**inputs)
    for key in z.files:
        if key.startswith("out__"):
            name = key[len("out__"):]
            assert_close(out.get(name, net.blobs[name].data), z[key].reshape(
                net.blobs[name].shape), F32_TOL, key)
        elif key.startswith("blob__") and key.endswith("__sum_sumsq"):
            name = key[len("blob__"):-len("__sum_sumsq")]
            check_summary(z, "blob__" + name, net.blobs[name].data, F32_TOL)
