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


def test_solver_count_and_rank_settings():
    from pyfacelayers.parallel import world
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    try:
        caffe.set_solver_count(4)
        caffe.set_solver_rank(3)
        caffe.set_multiprocess(True)
        assert (caffe.solver_count(), caffe.solver_rank()) == (4, 3)
        with pytest.raises(ValueError, match="solver count must be >= 1"):
            caffe.set_solver_count(0)
        with pytest.raises(TypeError, match="solver rank must be an integer"):
            caffe.set_solver_rank("one")
    finally:
        world.reset()
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0


def test_nccl_without_cupy_names_the_extra():
    import importlib.util
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed here (the NCCL path is checked by bench/parallel_gpu_check.sh)")
    assert caffe.has_nccl() is False
    with pytest.raises(PyFaceLayersError, match="needs cupy with NCCL.*pyfacelayers\\[gpu\\]"):
        caffe.NCCL.new_uid()
    with pytest.raises(PyFaceLayersError, match="needs cupy with NCCL"):
        caffe.NCCL(None, b"x" * 128)


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
