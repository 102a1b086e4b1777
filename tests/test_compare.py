"""pyfacelayers compare and tools/dump_caffe_blobs.py: references made from the golden
Caffe fixtures (B1_small, B3) pass; a planted one-layer fault is found at exactly that
layer; bad references give clear messages; the dump script (run through a ``caffe``
shim that re-exports pyfacelayers) writes what compare computes."""

import ast
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest

from caffe_ref import load, portable_values, set_recipe_weights
from conftest import child_env, shared_path

import pyfacelayers as caffe
from pyfacelayers import cli
from pyfacelayers import compare as C
from pyfacelayers.compare.report import array_errors, summary_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUMP_SCRIPT = os.path.join(ROOT, "tools", "dump_caffe_blobs.py")


def b1_paths():
    folder = shared_path("fixtures", "caffe-ref", "B1_small")
    return (os.path.join(folder, "B1_small_train.prototxt"),
            os.path.join(folder, "B1_small.caffemodel"), folder)


def fixture_to_reference(z, meta, out, blob_shapes=None):
    """Convert a set-B fixture (keys out__*, blob__*, blobdiff__*, diff__*, data_diff,
    summaries) into the compare reference format."""
    arrays = {"input/data": z["input_data"]}
    if "input_label" in z.files:
        arrays["input/label"] = z["input_label"]
    for key in z.files:
        parts = key.split("__")
        if parts[0] == "out":
            value = z[key]
            if blob_shapes and parts[1] in blob_shapes:
                value = value.reshape(blob_shapes[parts[1]])
            arrays["data/" + parts[1]] = value
        elif parts[0] == "diff" and len(parts) == 3:
            arrays["param_diff/%s/%s" % (parts[1], parts[2])] = z[key]
        elif parts[0] in ("blob", "blobdiff"):
            kind = "data/" if parts[0] == "blob" else "diff/"
            if len(parts) == 2:
                arrays[kind + parts[1]] = z[key]
            elif kind + parts[1] not in z.files and "%s__%s" % (parts[0], parts[1]) \
                    not in z.files:
                arrays["%s%s#%s" % (kind, parts[1], parts[2])] = z[key]
        elif key == "data_diff":
            arrays["diff/data"] = z[key]
        elif key == "param_after_forward__fc6__0":
            arrays["param/fc6/0"] = z[key]
    if "out__lambda" in z.files:  # fc6 ran one Forward from iteration 0
        arrays["lambda/fc6"] = z["out__lambda"]
        arrays["iter/fc6"] = np.array(1, np.int64)
    C.save_reference(out, {"caffe_version": "sphereface f20b130 (fixture)",
                           "phase": meta.get("phase", "TEST"), "model": meta.get("net"),
                           "dtype": "float64" if z["input_data"].dtype == np.float64
                           else "float32"}, arrays)
    return out


@pytest.fixture(scope="module")
def b1_reference(tmp_path_factory):
    model, weights, folder = b1_paths()
    z, meta = load(os.path.join(folder, "B1_small_f32.npz"))
    out = str(tmp_path_factory.mktemp("b1") / "b1_small_ref.npz")
    return fixture_to_reference(z, meta, out, {"softmax_loss": ()})  # Caffe's 0-axis loss


@pytest.fixture(scope="module")
def b1_full_dump(b1_reference, tmp_path_factory):
    """A full reference (every blob, in-place values, params) made by our own capture."""
    model, weights, _ = b1_paths()
    ref = C.load_reference(b1_reference)
    inputs = {k[len("input/"):]: v for k, v in ref.full.items() if k.startswith("input/")}
    net = caffe.Net(model, weights, caffe.TRAIN)
    arrays, info = C.capture(net, inputs, backward=True)
    out = str(tmp_path_factory.mktemp("dump") / "full.npz")
    C.save_reference(out, {"phase": "TRAIN", "net_name": info["net_name"],
                           "layers": info["layers"]}, arrays)
    return out


def run_cli(*argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(["compare"] + list(argv))
    return code, buf.getvalue()


def perturbed_weights(tmp_path, layer, index, factor=1.01):
    model, weights, _ = b1_paths()
    net = caffe.Net(model, weights, caffe.TRAIN)
    net.params[layer][index].data[...] *= factor
    path = str(tmp_path / ("bad_%s.caffemodel" % layer))
    net.save(path)
    return path


# -- B1_small from the stored Caffe outputs ------------------------------------------------
def test_b1_small_fixture_reference_passes(b1_reference):
    model, weights, _ = b1_paths()
    code, out = run_cli("--model", model, "--weights", weights, "--reference", b1_reference)
    assert code == 0, out
    assert "PASS: 83 arrays" in out
    lines = out.splitlines()
    keys = [line.split()[0] for line in lines if line.startswith(("data/", "diff/", "param"))]
    # net order: forward tops, then Backward from fc6 down to the data diff
    assert keys.index("data/conv1_1") < keys.index("data/fc5") < keys.index("data/fc6")
    assert keys.index("param_diff/fc6/0") < keys.index("param_diff/conv1_1/0") \
        < keys.index("diff/data")
    assert sum(k.startswith("param_diff/") for k in keys) == 63
    code, out = run_cli("--model", model, "--weights", weights, "--reference", b1_reference,
                        "--json")
    result = json.loads(out)
    assert code == 0 and result["passed"] and result["failed"] == 0
    assert "data/conv1_1@conv1_1" in result["not_in_reference"]


def test_b1_small_float64_reference_passes(tmp_path):
    model, weights, folder = b1_paths()
    z, meta = load(os.path.join(folder, "B1_small_f64.npz"))
    ref = fixture_to_reference(z, meta, str(tmp_path / "f64.npz"), {"softmax_loss": ()})
    report = C.compare_net(model, weights, ref, tolerance=1e-9)
    assert report.passed and report.compared == 83, report.format_table()


def test_planted_fault_found_with_fixture_reference(b1_reference, tmp_path):
    model, _, _ = b1_paths()
    bad = perturbed_weights(tmp_path, "fc5", 0)
    code, out = run_cli("--model", model, "--weights", bad, "--reference", b1_reference)
    assert code == 1
    marked = [line for line in out.splitlines() if "<== first over tolerance" in line]
    assert len(marked) == 1 and marked[0].startswith("data/fc5 ")
    assert 'top of layer "fc5" (InnerProduct)' in marked[0]
    # everything before fc5 still passes
    rows = out.splitlines()
    for line in rows[rows.index(next(r for r in rows if r.startswith("input/data"))):
                     rows.index(marked[0])]:
        assert " pass" in line, line
    result = json.loads(run_cli("--model", model, "--weights", bad, "--reference",
                                b1_reference, "--json")[1])
    assert result["first_failure"]["key"] == "data/fc5"
    assert result["first_failure"]["layer"] == "fc5"


@pytest.mark.parametrize("layer,index,with_params,first,where", [
    ("conv2_1", 0, True, "param/conv2_1/0", 'parameter of layer "conv2_1" (Convolution)'),
    ("conv2_1", 0, False, "data/conv2_1@conv2_1", 'top of layer "conv2_1" (Convolution)'),
    ("relu2_1", 0, False, "data/conv2_1", 'top of layer "relu2_1" (PReLU)'),
    ("conv3_4", 1, False, "data/conv3_4@conv3_4", 'top of layer "conv3_4" (Convolution)'),
])
def test_planted_fault_points_at_exactly_that_layer(b1_full_dump, tmp_path, layer, index,
                                                    with_params, first, where):
    model, _, _ = b1_paths()
    ref = C.load_reference(b1_full_dump)
    if not with_params:
        ref = C.Reference(ref.meta, {k: v for k, v in ref.arrays.items()
                                     if not k.startswith("param/")})
    report = C.compare_net(model, perturbed_weights(tmp_path, layer, index), ref)
    assert not report.passed and report.exit_code == 1
    assert report.first_failure.key == first
    assert report.where(report.first_failure) == where
    assert report.first_failure.layer == layer


def test_full_dump_of_the_good_weights_passes_exactly(b1_full_dump):
    model, weights, _ = b1_paths()
    report = C.compare_net(model, weights, b1_full_dump)
    assert report.passed and not report.absent
    assert max(r.rel for r in report.rows) == 0.0


# -- B3 deploy net: recipe weights saved as a caffemodel ----------------------------------
def test_b3_sphereface20_deploy_passes(tmp_path):
    z, meta = load(shared_path("fixtures", "caffe-ref", "B3_deploy",
                               "B3_sphereface20_deploy.npz"))
    model = shared_path("nets", "sphereface", "sphereface_deploy.prototxt")
    net = caffe.Net(model, caffe.TEST, seed=0)
    set_recipe_weights(net, meta["param_recipe"])  # (a 90 MB caffemodel otherwise)
    recipe = meta["input_recipe"]
    np.testing.assert_array_equal(
        portable_values(recipe["shape"], recipe["seed"], recipe["scale"]), z["input_data"])
    ref = fixture_to_reference(z, {"phase": "TEST"}, str(tmp_path / "b3.npz"))
    report = C.compare_net(net, None, ref)
    text = report.format_table()
    assert report.passed and report.compared == 6, text
    assert sum(r.summary for r in report.rows) == 4  # res2_3 ... res4_3 as summaries
    assert "PASS: 6 arrays" in text
    # a fault in the last residual block shows first at res4_3, not before
    net.params["conv4_3"][0].data[...] *= 1.01
    report = C.compare_net(net, None, ref)
    assert report.first_failure.key == "data/res4_3"
    assert [r.status for r in report.rows if r.status != "absent"][:4] == ["pass"] * 4


# -- bad references: clear messages --------------------------------------------------------
def test_reference_with_a_missing_blob_compares_the_rest(b1_reference, tmp_path):
    model, weights, _ = b1_paths()
    ref = C.load_reference(b1_reference)
    arrays = {k: v for k, v in ref.arrays.items() if k != "data/fc5"}
    path = str(tmp_path / "nofc5.npz")
    C.save_reference(path, ref.meta, arrays)
    code, out = run_cli("--model", model, "--weights", weights, "--reference", path, "--all")
    assert code == 0
    assert "PASS: 82 arrays" in out
    assert any(line.startswith("data/fc5 ") and line.rstrip().endswith("absent")
               for line in out.splitlines())
    assert "data/fc5" in out.split("not in reference")[1]
    result = json.loads(run_cli("--model", model, "--weights", weights, "--reference", path,
                                "--json")[1])
    assert "data/fc5" in result["not_in_reference"] and result["passed"]


def test_reference_with_a_wrong_shape(b1_reference, tmp_path):
    model, weights, _ = b1_paths()
    ref = C.load_reference(b1_reference)
    arrays = dict(ref.arrays)
    arrays["data/fc5"] = arrays["data/fc5"][:, :32]
    path = str(tmp_path / "shape.npz")
    C.save_reference(path, ref.meta, arrays)
    code, out = run_cli("--model", model, "--weights", weights, "--reference", path)
    assert code == 1
    line = next(l for l in out.splitlines() if l.startswith("data/fc5 "))
    assert "SHAPE" in line and "reference shape (2, 32), ours (2, 64)" in line
    assert "first over tolerance" in line


def test_reference_of_another_net(tmp_path):
    z, meta = load(shared_path("fixtures", "caffe-ref", "B3_deploy",
                               "B3_sphereface64_deploy.npz"))
    ref = fixture_to_reference(z, {"phase": "TEST"}, str(tmp_path / "sf64.npz"))
    model, weights, _ = b1_paths()
    code, out = run_cli("--model", model, "--weights", weights, "--reference", ref, "--json")
    assert code == 2 and "not in this net" in json.loads(out)["error"]
    with pytest.raises(C.CompareError, match=r"4 array.s. of the reference are not in this "
                                             r"net: data/res1_7, data/res2_15.*another net"):
        C.compare_net(model, weights, ref)
    # inputs of another net, and a reference without the net's label input
    ref = C.load_reference(ref)
    ref = C.Reference(ref.meta, {k: v for k, v in ref.arrays.items() if "/res" not in k})
    with pytest.raises(C.CompareError, match="image are not input blobs of the net"):
        C.compare_net(model, weights, ref, inputs={"image": np.zeros((1, 3))})
    with pytest.raises(C.CompareError, match="no value for input blob.s. label"):
        C.compare_net(model, weights, ref)


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros(2)}, "no meta_json"),
    ({"meta_json": np.array("{not json")}, "not JSON"),
    ({"meta_json": np.array('{"format": "other"}')}, "format is 'other'"),
    ({"meta_json": np.array('{"format": "pyfacelayers-blob-dump"}'),
      "blobs/fc5": np.zeros(2)}, "expected <kind>/<name>"),
    ({"meta_json": np.array('{"format": "pyfacelayers-blob-dump"}'),
      "data/fc5#sum_sumsq": np.zeros(2)}, "lacks"),
    ({"meta_json": np.array('{"format": "pyfacelayers-blob-dump"}'),
      "data/fc5": np.array([object()], dtype=object)}, "pickle"),
])
def test_bad_reference_files(tmp_path, arrays, match):
    path = str(tmp_path / "bad.npz")
    np.savez(path, **arrays)
    with pytest.raises(C.CompareError, match=match):
        C.load_reference(path)
    model, weights, _ = b1_paths()
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert cli.main(["compare", "--model", model, "--reference", path, "--json"]) == 2
    assert match.split()[0] in json.loads(buf.getvalue())["error"] or match == "pickle"


def test_missing_reference_and_gpu_without_device(b1_reference, tmp_path):
    model, weights, _ = b1_paths()
    assert run_cli("--model", model, "--reference", str(tmp_path / "none.npz"))[0] == 2
    try:
        import cupy  # noqa: F401
        pytest.skip("cupy is installed")
    except ImportError:
        pass
    code, _ = run_cli("--model", model, "--weights", weights, "--reference", b1_reference,
                      "--gpu", "0")
    assert code == 2


# -- the MarginInnerProduct counter ---------------------------------------------------------
def test_lambda_iteration_is_synchronised_and_explained(b1_full_dump, tmp_path):
    """A Caffe run whose fc6 counter was at 10 (e.g. `iteration: 10` in its prototxt):
    compare sets ours from the reference by default, and explains the difference when
    asked not to."""
    model, weights, _ = b1_paths()
    net = caffe.Net(model, weights, caffe.TRAIN)
    net.layer_dict["fc6"].iteration = 10
    ref = C.load_reference(b1_full_dump)
    inputs = {k[len("input/"):]: v for k, v in ref.full.items() if k.startswith("input/")}
    arrays, _ = C.capture(net, inputs, backward=True)
    assert int(arrays["iter/fc6"]) == 11
    path = str(tmp_path / "iter11.npz")
    C.save_reference(path, {"phase": "TRAIN", "margin": {"fc6": {"forwards": 1}}}, arrays)
    report = C.compare_net(model, weights, path)
    assert report.passed
    assert any("iteration counter set to 10 (the prototxt gives 0)" in n for n in report.notes)
    report = C.compare_net(model, weights, path, sync_iteration=False)
    assert not report.passed
    assert report.first_failure.key == "lambda/fc6"
    assert "iteration 11 vs 1" in report.first_failure.note
    assert "not stored in caffemodels" in report.first_failure.note
    code, out = run_cli("--model", model, "--weights", weights, "--reference", path,
                        "--no-sync-iteration")
    assert code == 1 and "iteration 11 vs 1" in out


# -- a net without a loss: Backward from given top diffs ----------------------------------
SMALL_NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 }
                        bias_filler { type: "gaussian" std: 1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip" top: "ip" }
force_backward: true
"""


def test_top_diff_backward_for_a_net_without_loss(tmp_path):
    model = str(tmp_path / "small.prototxt")
    with open(model, "w") as f:
        f.write(SMALL_NET)
    net = caffe.Net(model, caffe.TEST, seed=3)
    weights = str(tmp_path / "small.caffemodel")
    net.save(weights)
    rng = np.random.default_rng(0)
    inputs = {"data": rng.standard_normal((2, 3)).astype(np.float32)}
    top = {"ip": rng.standard_normal((2, 4)).astype(np.float32)}
    with pytest.raises(C.CompareError, match="no loss layer.*--top-diff"):
        C.capture(caffe.Net(model, weights, caffe.TEST), inputs, backward=True)
    arrays, info = C.capture(caffe.Net(model, weights, caffe.TEST), inputs, backward=True,
                             top_diff=top)
    assert info["backward_from"] == "top_diff"
    assert "data/ip@ip" in arrays and "diff/data" in arrays
    ref = str(tmp_path / "ref.npz")
    C.save_reference(ref, {"phase": "TEST"}, arrays)
    # the reference's own output diffs are used when no --top-diff is given
    assert C.compare_net(model, weights, ref).passed
    np.savez(str(tmp_path / "top.npz"), ip=top["ip"] * 2)
    report = C.compare_net(model, weights, ref, top_diff=str(tmp_path / "top.npz"))
    assert not report.passed and report.first_failure.key == "diff/ip"


# -- the dump script, run through a `caffe` shim ------------------------------------------
def test_dump_script_does_not_import_pyfacelayers():
    with open(DUMP_SCRIPT) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "pyfacelayers" not in imported
    # scikit-image: what pycaffe's caffe.io itself uses (only for an image list)
    assert imported <= {"argparse", "json", "os", "sys", "numpy", "caffe", "google",
                        "skimage"}


def _run_dump(tmp_path, *argv, shim_code=""):
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "caffe.py").write_text(
        "# stands in for pycaffe in this test\nimport sys\nimport pyfacelayers\n"
        "sys.modules[__name__] = pyfacelayers\n" + shim_code)
    env = child_env(shim)
    return subprocess.run([sys.executable, DUMP_SCRIPT] + list(argv), env=env,
                          capture_output=True, text=True, timeout=120)


def test_dump_script_through_shim_matches_compare(b1_reference, tmp_path):
    model, weights, _ = b1_paths()
    ref = C.load_reference(b1_reference)
    np.savez(str(tmp_path / "in.npz"), data=ref.full["input/data"],
             label=ref.full["input/label"])
    out = str(tmp_path / "dump.npz")
    done = _run_dump(tmp_path, "--model", model, "--weights", weights, "--input",
                     str(tmp_path / "in.npz"), "--phase", "TRAIN", "--out", out, "--backward")
    assert done.returncode == 0, done.stderr
    assert "Backward from the loss" in done.stdout
    dumped = C.load_reference(out)
    assert dumped.meta["phase"] == "TRAIN" and dumped.meta["backward_from"] == "loss"
    assert dumped.meta["net_name"] == "SpherefaceNet-20"
    assert dumped.meta["margin"]["fc6"]["iteration_field"] == 0
    assert int(dumped.full["iter/fc6"]) == 1
    net = caffe.Net(model, weights, caffe.TRAIN)
    arrays, info = C.capture(net, {"data": ref.full["input/data"],
                                   "label": ref.full["input/label"]}, backward=True)
    assert set(arrays) == set(dumped.arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(dumped.arrays[key], value, err_msg=key)
    assert dumped.meta["blob_order"] == info["blob_order"]
    assert dumped.meta["layers"] == info["layers"]
    # and the dump agrees with the stored Caffe outputs, through compare
    code, text = run_cli("--model", model, "--weights", weights, "--reference", out)
    assert code == 0 and "PASS: %d arrays" % len(arrays) in text


def test_dump_script_image_list_and_errors(tmp_path):
    model, weights, _ = b1_paths()
    images = shared_path("fixtures", "caffe-ref", "B4_imagedata", "images")
    listing = tmp_path / "list.txt"
    listing.write_text("".join("%s %d\n" % (os.path.join(images, "img%d.png" % i), i)
                               for i in range(3)))
    out = str(tmp_path / "img.npz")
    done = _run_dump(tmp_path, "--model", model, "--weights", weights, "--input",
                     str(listing), "--phase", "TRAIN", "--out", out)
    assert done.returncode == 0, done.stderr
    dumped = C.load_reference(out)
    assert dumped.full["input/data"].shape == (3, 3, 28, 24)
    np.testing.assert_array_equal(dumped.full["input/label"], [0, 1, 2])
    assert not any(k.startswith("diff/") for k in dumped.arrays)
    code, text = run_cli("--model", model, "--weights", weights, "--reference", out,
                         "--input", str(listing))
    assert code == 0, text
    done = _run_dump(tmp_path, "--model", model, "--weights", weights, "--phase", "TRAIN",
                     "--out", out)
    assert done.returncode != 0 and "give --input" in done.stderr


# -- pieces -------------------------------------------------------------------------------
def test_keys_and_errors():
    assert C.split_key("data/conv1@relu1#vals") == ("data", "conv1", "relu1", "vals")
    assert C.split_key("param_diff/inception/3x3/1") == ("param_diff", "inception/3x3", 1,
                                                         None)
    assert C.split_key("data/a/b") == ("data", "a/b", None, None)
    for bad in ("data", "blob/x", "param/x/y", "data/x#mean"):
        with pytest.raises(ValueError):
            C.split_key(bad)
    ref = np.array([3.0, 4.0, np.nan])
    assert array_errors(np.array([3.0, 4.0, np.nan]), ref) == (0.0, 0.0)
    max_abs, rel = array_errors(np.array([3.0, 4.5, np.nan]), ref)
    assert max_abs == 0.5 and rel == pytest.approx(0.1)
    assert array_errors(np.array([3.0, 4.0, 1.0]), ref)[1] == float("inf")
    assert array_errors(np.zeros(2), np.zeros(2)) == (0.0, 0.0)
    assert array_errors(np.array([1e-6, 0]), np.zeros(2))[1] == pytest.approx(1e-6)


def test_summary_of_a_blob_of_another_size_is_a_shape_row(b1_reference, tmp_path):
    model, weights, _ = b1_paths()
    ref = C.load_reference(b1_reference)
    arrays = dict(ref.arrays)
    values = np.arange(10.0)
    sums, idx, vals = summary_of(values)
    arrays.update({"data/res2_3#sum_sumsq": sums, "data/res2_3#idx": idx,
                   "data/res2_3#vals": vals})
    del arrays["data/res2_3"]
    path = str(tmp_path / "summary.npz")
    C.save_reference(path, ref.meta, arrays)
    report = C.compare_net(model, weights, path)
    row = report.first_failure
    assert row.key == "data/res2_3" and row.status == "SHAPE" and row.summary
    assert "another size" in row.note


def test_partial_reference_names_the_layers_in_between(b1_reference, tmp_path):
    model, _, _ = b1_paths()
    report = C.compare_net(model, perturbed_weights(tmp_path, "conv2_1", 0), b1_reference)
    assert report.first_failure.key == "data/res2_3"
    assert report.suspects(report.first_failure) == [
        "conv2_1", "relu2_1", "conv2_2", "relu2_2", "conv2_3", "relu2_3", "res2_3"]
    assert "the fault is in one of the 7 layers conv2_1" in report.format_table()
    assert report.to_dict()["suspect_layers"][0] == "conv2_1"


def test_a_backward_fault_is_found_at_its_layer(b1_full_dump, b1_reference):
    """A layer whose Backward is wrong (planted) while its Forward is right."""
    model, weights, _ = b1_paths()
    net = caffe.Net(model, weights, caffe.TRAIN)
    layer = net.layer_dict["conv3_4"]
    original = layer.backward

    def wrong_backward(top, propagate_down, bottom):
        original(top, propagate_down, bottom)
        bottom[0].diff[...] *= 1.01

    layer.backward = wrong_backward
    report = C.compare_net(net, None, b1_full_dump)
    first = report.first_failure
    assert first.section == "backward" and first.key == "diff/res3_3_res3_3_0_split_0"
    assert report.where(first) == 'Backward of layer "conv3_4" (Convolution)'
    assert all(r.status == "pass" for r in report.rows if r.section in ("forward", "param"))
    # against the stored Caffe outputs, the first diff below conv3_4 fails
    net = caffe.Net(model, weights, caffe.TRAIN)
    layer = net.layer_dict["conv3_4"]
    original = layer.backward
    layer.backward = wrong_backward
    report = C.compare_net(net, None, b1_reference)
    assert report.first_failure.key == "param_diff/relu3_3/0"
    assert report.suspects(report.first_failure) == ["relu3_3", "res3_3", "conv3_4"]


def test_dump_script_top_diff_for_a_net_without_loss(tmp_path):
    model = str(tmp_path / "small.prototxt")
    with open(model, "w") as f:
        f.write(SMALL_NET)
    weights = str(tmp_path / "small.caffemodel")
    caffe.Net(model, caffe.TEST, seed=3).save(weights)
    rng = np.random.default_rng(1)
    np.save(str(tmp_path / "x.npy"), rng.standard_normal((2, 3)).astype(np.float32))
    out = str(tmp_path / "ref.npz")
    common = ["--model", model, "--weights", weights, "--input", str(tmp_path / "x.npy"),
              "--out", out, "--backward"]
    done = _run_dump(tmp_path, *common)
    assert done.returncode != 0 and "no loss: give --top-diff" in done.stderr
    np.savez(str(tmp_path / "top.npz"), ip=rng.standard_normal((2, 4)).astype(np.float32))
    done = _run_dump(tmp_path, *common, "--top-diff", str(tmp_path / "top.npz"))
    assert done.returncode == 0, done.stderr
    ref = C.load_reference(out)
    assert ref.meta["backward_from"] == "top_diff" and ref.meta["force_backward"] is True
    assert "diff/data" in ref.full and "data/ip@ip" in ref.full
    report = C.compare_net(model, weights, out, top_diff=str(tmp_path / "top.npz"))
    assert report.passed and not report.absent
    np.savez(str(tmp_path / "bad.npz"), ip=np.zeros((3, 4), np.float32))
    done = _run_dump(tmp_path, *common, "--top-diff", str(tmp_path / "bad.npz"))
    assert done.returncode != 0 and "has shape (3, 4)" in done.stderr


# -- what a user meets with a real pycaffe (issue 16, part 6) ------------------------------
def test_phase_other_than_the_dumps_is_refused(b1_full_dump):
    model, weights, _ = b1_paths()
    code, _ = run_cli("--model", model, "--weights", weights, "--reference", b1_full_dump,
                      "--phase", "TRAIN")
    assert code == 0
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(["compare", "--model", model, "--weights", weights, "--reference",
                         b1_full_dump, "--phase", "TEST", "--json"])
    error = json.loads(buf.getvalue())["error"]
    assert code == 2 and "--phase TEST, but the reference was dumped in phase TRAIN" in error


def _small(tmp_path, name, text=SMALL_NET, seed=3):
    model = str(tmp_path / (name + ".prototxt"))
    with open(model, "w") as f:
        f.write(text)
    weights = str(tmp_path / (name + ".caffemodel"))
    caffe.Net(model, caffe.TEST, seed=seed).save(weights)
    return model, weights


def _dump_like_the_tool(model, weights, path, backward=False, top=None, **meta):
    """What tools/dump_caffe_blobs.py writes, made with our capture."""
    net = caffe.Net(model, weights, caffe.TEST) if weights else caffe.Net(model, caffe.TEST,
                                                                         seed=11)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    arrays, info = C.capture(net, {"data": x}, backward=backward, top_diff=top)
    full = {"tool": "dump_caffe_blobs.py", "phase": "TEST", "net_name": info["net_name"],
            "layers": info["layers"],
            "weights": os.path.basename(weights) if weights else None}
    full.update(meta)
    C.save_reference(path, full, arrays)
    return path


def test_a_dump_of_another_net_with_the_same_name_says_so(tmp_path):
    model, weights = _small(tmp_path, "small")
    other, other_weights = _small(tmp_path, "other", SMALL_NET.replace('"ReLU"', '"Sigmoid"'))
    ref = _dump_like_the_tool(other, other_weights, str(tmp_path / "other.npz"))
    with pytest.raises(C.CompareError, match=r'another net with the same name "small": it '
                                             r'has "relu" \(Sigmoid\) where this net has '
                                             r'"relu" \(ReLU\) after "ip" \(2 layers there, '
                                             r'2 here'):
        C.compare_net(model, weights, ref)
    code, _ = run_cli("--model", model, "--weights", weights, "--reference", ref)
    assert code == 2
    # the same layers, other sizes
    wider, wider_weights = _small(tmp_path, "wider", SMALL_NET.replace("num_output: 4",
                                                                       "num_output: 5"))
    ref = _dump_like_the_tool(wider, wider_weights, str(tmp_path / "wider.npz"))
    with pytest.raises(C.CompareError, match=r'parameter 0 of layer "ip" has shape \(5, 3\) '
                                             r'there, \(4, 3\) here'):
        C.compare_net(model, weights, ref)
    # one layer more there
    longer, longer_weights = _small(tmp_path, "longer", SMALL_NET.replace(
        "force_backward", 'layer { name: "act" type: "TanH" bottom: "ip" top: "act" }\n'
                          "force_backward"))
    ref = _dump_like_the_tool(longer, longer_weights, str(tmp_path / "longer.npz"))
    with pytest.raises(C.CompareError, match=r'3 layers there, 2 here, not counting Input '
                                             r'and Split layers; the reference goes on '
                                             r'with "act" \(TanH\)'):
        C.compare_net(model, weights, ref)
    # and the same net passes
    assert C.compare_net(model, weights, _dump_like_the_tool(
        model, weights, str(tmp_path / "same.npz"))).passed


def test_a_dump_made_without_weights_is_explained_at_the_first_parameter(tmp_path):
    model, weights = _small(tmp_path, "small")
    ref = _dump_like_the_tool(model, None, str(tmp_path / "noweights.npz"))
    report = C.compare_net(model, weights, ref)
    first = report.first_failure
    assert first.key == "param/ip/0"
    assert "dumped without --weights" in first.note and "--weights small.caffemodel" \
        in first.note
    code, out = run_cli("--model", model, "--weights", weights, "--reference", ref)
    assert code == 1 and "note: the reference was dumped without --weights" in out
    # dumped with weights, compared without them
    ref = _dump_like_the_tool(model, weights, str(tmp_path / "weights.npz"))
    report = C.compare_net(model, None, ref)
    assert "dumped with --weights small.caffemodel; give the same file" in \
        report.first_failure.note
    # other weights files
    _, other = _small(tmp_path, "small2", seed=4)
    report = C.compare_net(model, other, ref)
    assert "weights small.caffemodel, this run uses small2.caffemodel" in \
        report.first_failure.note
    # a net built by the caller: its weights are not a file compare knows
    report = C.compare_net(caffe.Net(model, other, caffe.TEST), None, ref)
    assert report.first_failure.key == "param/ip/0" and "weights" not in \
        report.first_failure.note


def test_no_loss_and_no_force_backward_means_no_backward(tmp_path):
    text = SMALL_NET.replace("force_backward: true\n", "")
    model, weights = _small(tmp_path, "noforce", text)
    forced, _ = _small(tmp_path, "forced")  # same layers, force_backward: true
    top = {"ip": np.ones((2, 4), np.float32)}
    ref = _dump_like_the_tool(forced, weights, str(tmp_path / "diffs.npz"), backward=True,
                              top=top)
    with pytest.raises(C.CompareError, match="no loss layer and no force_backward: true.*"
                                             "runs no Backward"):
        C.compare_net(model, weights, ref, backward=True)
    code, _ = run_cli("--model", model, "--weights", weights, "--reference", ref,
                      "--backward")
    assert code == 2
    # the reference's diffs alone do not ask for Backward: Forward is compared, with a note
    report = C.compare_net(model, weights, ref)
    assert report.passed and not any(r.section == "backward" for r in report.rows)
    assert any(n.startswith("Backward not compared") for n in report.notes)
    # the dump script refuses it too
    np.save(str(tmp_path / "x.npy"), np.zeros((2, 3), np.float32))
    np.savez(str(tmp_path / "top.npz"), **top)
    done = _run_dump(tmp_path, "--model", model, "--weights", weights, "--input",
                     str(tmp_path / "x.npy"), "--out", str(tmp_path / "d.npz"), "--backward",
                     "--top-diff", str(tmp_path / "top.npz"))
    assert done.returncode != 0 and "runs no Backward" in done.stderr


def test_compressed_dump_is_read_like_a_plain_one(b1_reference, tmp_path):
    import zipfile
    model, weights, _ = b1_paths()
    ref = C.load_reference(b1_reference)
    np.savez(str(tmp_path / "in.npz"), data=ref.full["input/data"],
             label=ref.full["input/label"])
    sizes = {}
    for flag in ([], ["--compress"]):
        out = str(tmp_path / ("dump%s.npz" % len(flag)))
        done = _run_dump(tmp_path, "--model", model, "--weights", weights, "--input",
                         str(tmp_path / "in.npz"), "--phase", "TRAIN", "--out", out, *flag)
        assert done.returncode == 0, done.stderr
        with zipfile.ZipFile(out) as z:
            kinds = {i.compress_type for i in z.infolist()}
        assert kinds == ({zipfile.ZIP_DEFLATED} if flag else {zipfile.ZIP_STORED})
        assert C.load_reference(out).meta["compressed"] is bool(flag)
        code, text = run_cli("--model", model, "--weights", weights, "--reference", out)
        assert code == 0, text
        sizes[bool(flag)] = os.path.getsize(out)
    assert sizes[True] < sizes[False]
    # references written here can be compressed too
    C.save_reference(str(tmp_path / "c.npz"), ref.meta, ref.arrays, compress=True)
    assert C.compare_net(model, weights, str(tmp_path / "c.npz")).passed


ANTIALIAS_SHIM = """
from pyfacelayers import io as _io
_plain = _io.resize_image
def _newer_scikit_image(im, new_dims, interp_order=1):
    return _plain(im, new_dims, interp_order, anti_aliasing=True)
_io.resize_image = _newer_scikit_image
"""

AS_GREY_SHIM = """
from pyfacelayers import io as _io
def _fork_load_image(filename, color=True):
    raise TypeError("imread() got an unexpected keyword argument 'as_grey'")
_io.load_image = _fork_load_image
"""


def _image_list(tmp_path):
    images = shared_path("fixtures", "caffe-ref", "B4_imagedata", "images")
    listing = tmp_path / "list.txt"
    listing.write_text("".join("%s %d\n" % (os.path.join(images, "img%d.png" % i), i)
                               for i in range(2)))
    return str(listing)


def test_image_list_resizes_as_the_dumps_scikit_image(tmp_path):
    """112x96 images into a 28x24 input: newer scikit-image blurs before shrinking.
    The dump records which its caffe.io did; compare follows it, or is told."""
    model, weights, _ = b1_paths()
    listing = _image_list(tmp_path)
    for shim, antialias in (("", False), (ANTIALIAS_SHIM, True)):
        out = str(tmp_path / ("img_%s.npz" % antialias))
        done = _run_dump(tmp_path, "--model", model, "--weights", weights, "--input",
                         listing, "--phase", "TRAIN", "--out", out, shim_code=shim)
        assert done.returncode == 0, done.stderr
        assert C.load_reference(out).meta["image_antialias"] is antialias
        code, text = run_cli("--model", model, "--weights", weights, "--reference", out,
                             "--input", listing)
        assert code == 0, text
        wrong = "plain" if antialias else "antialias"
        code, text = run_cli("--model", model, "--weights", weights, "--reference", out,
                             "--input", listing, "--image-resize", wrong)
        first = [l for l in text.splitlines() if "first over tolerance" in l]
        assert code == 1 and first[0].startswith("input/data "), text
    right = "antialias"
    ref = C.load_reference(out)
    meta = dict(ref.meta)
    del meta["image_antialias"]  # an older dump: plain unless told
    C.save_reference(str(tmp_path / "old.npz"), meta, ref.arrays)
    assert run_cli("--model", model, "--weights", weights, "--reference",
                   str(tmp_path / "old.npz"), "--input", listing)[0] == 1
    assert run_cli("--model", model, "--weights", weights, "--reference",
                   str(tmp_path / "old.npz"), "--input", listing,
                   "--image-resize", right)[0] == 0


def test_dump_reads_images_itself_when_caffe_io_knows_only_as_grey(tmp_path):
    pytest.importorskip("skimage", reason="the fallback reads with scikit-image, as "
                                          "pycaffe does")
    model, weights, _ = b1_paths()
    listing = _image_list(tmp_path)
    out = str(tmp_path / "fork.npz")
    done = _run_dump(tmp_path, "--model", model, "--weights", weights, "--input", listing,
                     "--phase", "TRAIN", "--out", out, shim_code=AS_GREY_SHIM)
    assert done.returncode == 0, done.stderr
    meta = C.load_reference(out).meta
    assert "as_gray" in meta["image_reader"] and meta["skimage_version"]
    code, text = run_cli("--model", model, "--weights", weights, "--reference", out,
                         "--input", listing)
    assert code == 0, text
