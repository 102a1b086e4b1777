"""The pyfacelayers command line: --version and info."""

import subprocess
import sys

import pytest
from conftest import shared_path

from pyfacelayers import __version__
from pyfacelayers.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_info_lists_every_layer_of_sphereface_model(capsys):
    from pyfacelayers.fileio import read_net
    path = shared_path("nets", "sphereface", "sphereface_model.prototxt")
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    for layer in read_net(path).layer:
        assert layer.name in out and layer.type in out
    assert "MarginInnerProduct" in out


def test_info_on_a_deploy_net_gives_shapes_and_parameter_count(capsys):
    assert main(["info", shared_path("nets", "sphereface", "sphereface_deploy.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "1x512" in out.replace(" ", "") or "fc5" in out
    assert "parameters:" in out


def test_info_on_a_caffemodel(capsys):
    path = shared_path("fixtures", "caffe-ref", "B1_small", "B1_small.caffemodel")
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    assert "fc6" in out and "16x64" in out


def test_info_on_missing_file_is_a_clean_error(capsys, tmp_path):
    assert main(["info", str(tmp_path / "missing.prototxt")]) == 1
    assert "missing.prototxt" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "pyfacelayers", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert __version__ in out


def test_gflags_style_flags_as_caffe_takes_them():
    from pyfacelayers.cli import gflags_style
    assert gflags_style(["train", "-solver", "s.prototxt", "-gpu=0", "-weights", "a,b"]) == \
        ["train", "--solver", "s.prototxt", "--gpu=0", "--weights", "a,b"]
    # one-letter options, negative numbers, plain words and what follows "--" stay
    assert gflags_style(["-h", "--level", "-1", "x", "--", "-solver"]) == \
        ["-h", "--level", "-1", "x", "--", "-solver"]
    assert gflags_style(["--sigint_effect", "none"]) == ["--sigint_effect", "none"]
