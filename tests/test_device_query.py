"""``pyfacelayers device_query`` (caffe device_query) with a stand-in for cupy's CUDA
runtime: Caffe's labels and order, the CUDA 13 fallbacks, device ids, errors."""

import argparse

import pytest

from pyfacelayers import cli
from pyfacelayers.commands import device_query

H200 = {"name": b"NVIDIA H200", "major": 9, "minor": 0, "totalGlobalMem": 150110011392,
        "sharedMemPerBlock": 49152, "regsPerBlock": 65536, "warpSize": 32,
        "memPitch": 2147483647, "maxThreadsPerBlock": 1024, "maxThreadsDim": (1024, 1024, 64),
        "maxGridSize": (2147483647, 65535, 65535), "totalConstMem": 65536,
        "textureAlignment": 512, "multiProcessorCount": 132}


class FakeRuntime:
    """Two devices; like cupy built for CUDA 13, the properties lack clockRate,
    deviceOverlap and kernelExecTimeoutEnabled, which come from attributes."""

    def __init__(self, count=2):
        self.count = count
        self.attributes = {13: 1980000, 15: 1, 17: 0}
        self.asked = []

    def getDeviceCount(self):
        return self.count

    def getDeviceProperties(self, device):
        return dict(H200, name=b"NVIDIA H200 #%d\0" % device)

    def deviceGetAttribute(self, attribute, device):
        self.asked.append((attribute, device))
        return self.attributes[attribute]


def query(gpu, runtime=None):
    lines = []
    device_query.run(argparse.Namespace(gpu=gpu), out=lines.append,
                     runtime=runtime or FakeRuntime())
    return lines


def test_prints_caffes_lines_in_caffes_order():
    lines = query("1")
    assert lines[0] == "Querying GPUs 1"
    assert lines[1] == "Device id:                     1"
    assert lines[2] == "Major revision number:         9"
    assert lines[4] == "Name:                          NVIDIA H200 #1"
    assert "Total shared memory per block: 49152" in lines
    assert "Maximum dimension of block:    1024, 1024, 64" in lines
    assert "Maximum dimension of grid:     2147483647, 65535, 65535" in lines
    assert "Clock rate:                    1980000" in lines
    assert "Concurrent copy and execution: Yes" in lines
    assert "Kernel execution timeout:      No" in lines
    labels = [line.split(":")[0] for line in lines[1:19]]
    assert labels == ["Device id"] + [label for label, _, _ in device_query.FIELDS]
    assert lines[-1].startswith("cuDNN:")


def test_fields_present_in_the_struct_are_not_asked_again():
    runtime = FakeRuntime()
    runtime.getDeviceProperties = lambda device: dict(H200, clockRate=1410000,
                                                      deviceOverlap=0,
                                                      kernelExecTimeoutEnabled=1)
    lines = query("0", runtime)
    assert runtime.asked == []
    assert "Clock rate:                    1410000" in lines
    assert "Concurrent copy and execution: No" in lines
    assert "Kernel execution timeout:      Yes" in lines


def test_all_and_lists_of_devices():
    assert sum(line.startswith("Device id:") for line in query("all")) == 2
    assert [line for line in query("1,0") if line.startswith("Device id:")] == \
        ["Device id:                     1", "Device id:                     0"]


@pytest.mark.parametrize("gpu,message", [("2", "--gpu 2: no such device (this machine has "
                                                "2: 0 to 1)"),
                                         ("-1", "no such device"),
                                         ("x", "device ids separated by commas or 'all'")])
def test_bad_device_ids(gpu, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        query(gpu)


def test_no_device_is_a_one_line_error(capsys, monkeypatch):
    def no_gpu():
        raise RuntimeError("GPU mode: no usable CUDA device (driver missing)")
    monkeypatch.setattr(device_query.backend, "import_cupy", no_gpu)
    assert cli.main(["device_query", "--gpu", "0"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("pyfacelayers device_query: error: GPU mode: no usable CUDA "
                           "device (driver missing)")
    with pytest.raises(ValueError, match="no CUDA device found"):
        query("0", FakeRuntime(count=0))


def test_gpu_is_required(capsys):
    with pytest.raises(SystemExit):
        cli.main(["device_query"])
    assert "--gpu" in capsys.readouterr().err
