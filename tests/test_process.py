"""pycaffe's process-level functions: logging, solver count/rank, NCCL, Timer."""

import logging
import re
import time

import pytest

import pyfacelayers as caffe
from pyfacelayers.errors import PyFaceLayersError


@pytest.fixture(autouse=True)
def restore_logger():
    logger = logging.getLogger("pyfacelayers")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_init_log_and_log_write_glog_lines(capsys):
    caffe.init_log()
    caffe.log("hello from a script")
    err = capsys.readouterr().err
    assert re.search(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ process\.py:\d+\] hello from a "
                     r"script$", err, re.M)
    caffe.init_log(1)  # WARNING and above; the earlier handler is replaced, not doubled
    caffe.log("not shown")
    logging.getLogger("pyfacelayers").warning("shown once")
    err = capsys.readouterr().err
    assert "not shown" not in err and err.count("shown once") == 1
    with pytest.raises(ValueError, match="0 \\(INFO\\) to 3 \\(FATAL\\)"):
        caffe.init_log(7)


def test_single_device_training_settings():
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    assert caffe.has_nccl() is False
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)
    caffe.set_multiprocess(True)
    with pytest.raises(PyFaceLayersError, match="solver count 2: .* \\(multi-GPU"):
        caffe.set_solver_count(2)
    with pytest.raises(PyFaceLayersError, match="solver rank 1"):
        caffe.set_solver_rank(1)
    with pytest.raises(PyFaceLayersError, match="NCCL multi-GPU training is not supported"):
        caffe.NCCL(None, "uid")


def test_timer():
    timer = caffe.Timer()
    assert timer.ms == 0.0
    timer.start()
    time.sleep(0.02)
    timer.stop()
    elapsed = timer.ms
    assert 15 <= elapsed < 2000
    time.sleep(0.01)
    assert timer.ms == elapsed  # stopped: fixed
