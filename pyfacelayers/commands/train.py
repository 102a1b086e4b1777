"""``pyfacelayers train``: train a net with a solver, as ``caffe train``.

    pyfacelayers train --solver S [--weights W | --snapshot S] [--gpu ID] [--log FILE]

Data-parallel training (docs/parallel.md): ``--gpu 0,1,2,3`` or ``--gpu all`` trains
one rank per GPU over NCCL, started by this command; ``mpiexec -n N pyfacelayers train
...`` trains N ranks under MPI (CPU ranks, or GPU ranks with ``--gpu``). Rank 0 alone
logs, tests and writes snapshots.

``--snapshot latest`` (when no file is named "latest") resumes from the newest complete
snapshot under the solver's snapshot_prefix, skipping sets a killed process left
incomplete and removing its temporary files; with none it starts from iteration 0.

A progress line on stderr (iteration, loss, lambda when the net has a blob "lambda",
lr, it/s) redraws in place on a terminal and is printed plainly otherwise; Caffe's log
lines go to --log FILE (glog layout).

Signals, as ``caffe train``'s --sigint_effect / --sighup_effect (stop, snapshot or
none; defaults stop and snapshot): "stop" ends training after the current iteration
and snapshots, "snapshot" snapshots after the current iteration and goes on. With
"stop", a second Ctrl-C stops at once (still snapshotting unless an update was half
applied).
"""

import logging
import os
import signal
import sys
import threading
import time

import numpy as np

from .. import backend
from ..fileio.atomic import stale_temp_files
from ..parallel import DataParallel, launch, world
from ..process import add_log_file
from ..solvers import get_solver, read_solver
from ..solvers.snapshot import latest_snapshot
from . import _common

log = logging.getLogger("pyfacelayers")

# Lines the progress display already shows; not repeated on the console.
_ITERATION_NOISE = ("Train net output #", "Iteration ")


def register(subparsers):
    p = subparsers.add_parser("train", help="train a net with a solver (as caffe train)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--solver", required=True, help="the solver .prototxt")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--weights", help="initial weights: .caffemodel file(s), comma "
                                         "separated (fine-tuning)")
    group.add_argument("--snapshot", help="a .solverstate to resume training from, or "
                                          "\"latest\": the newest complete snapshot of the "
                                          "solver's snapshot_prefix, if any")
    _common.add_device_arguments(p, several=True)
    p.add_argument("--log", metavar="FILE", help="append Caffe-style log lines to FILE")
    p.add_argument("--level", type=int, default=None, help="the train net's NetState level")
    p.add_argument("--stage", action="append", help="the train net's NetState stage(s)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="the nets' Dtype (default float32)")
    for name, signal_name, default in (("sigint_effect", "SIGINT (Ctrl-C)", "stop"),
                                       ("sighup_effect", "SIGHUP", "snapshot")):
        p.add_argument("--" + name, choices=SIGNAL_EFFECTS, default=default,
                       help="what %s does: stop (after this iteration, with a snapshot), "
                            "snapshot (and go on) or none (default %s)"
                            % (signal_name, default))
    _common.add_python_layer_argument(p)
    p.set_defaults(func=run)


SIGNAL_EFFECTS = ("stop", "snapshot", "none")


class Progress:
    """The one-line progress display on stderr."""

    def __init__(self, solver, stream=None):
        self.solver = solver
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = solver.param.display or 20
        self.start = None
        self.start_iter = None
        self.shown = False
        self.last = ""
        self.drawn = 0.0  # when the tty line was last redrawn (at most 4 times a second)

    def __call__(self, solver, loss):
        now = time.time()
        if self.start is None:
            self.start, self.start_iter = now, solver.iter - 1
        shown_now = solver.iter % self.every == 0 or solver.iter >= solver.param.max_iter
        if not shown_now and (not self.tty or now - self.drawn < 0.25):
            return  # reading the loss (and lambda) would make the host wait for a GPU
        self.drawn = now
        done = solver.iter - self.start_iter
        rate = done / (now - self.start) if now > self.start else 0.0
        parts = ["iter %d/%d" % (solver.iter, solver.param.max_iter),
                 "loss %.4g" % loss]
        if "lambda" in solver.net.blobs:
            value = np.asarray(_common.backend.to_numpy(solver.net.blobs["lambda"].data))
            parts.append("lambda %.4g" % float(value.ravel()[0]))
        parts += ["lr %.3g" % (solver.lr or 0.0), "%.2f it/s" % rate]
        self.last = " | ".join(parts)
        if self.tty:
            self.stream.write("\r\x1b[K" + self.last)
            self.stream.flush()
            self.shown = True
        else:
            self.stream.write(self.last + "\n")
            self.stream.flush()

    def clear(self):
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def redraw(self):
        if self.tty and self.shown:
            self.stream.write(self.last)
            self.stream.flush()

    def finish(self):
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()
            self.shown = False


class ConsoleHandler(logging.Handler):
    """Messages other than per-iteration lines, printed above the progress line."""

    def __init__(self, progress_ref):
        super().__init__(logging.INFO)
        self.progress_ref = progress_ref

    def emit(self, record):
        message = record.getMessage()
        if record.levelno < logging.WARNING and message.lstrip().startswith(_ITERATION_NOISE) \
                and ("loss = " in message or "lr = " in message or "output #" in message):
            return
        progress = self.progress_ref[0]
        stream = progress.stream if progress else sys.stderr
        if progress:
            progress.clear()
        prefix = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
        stream.write(prefix + message + "\n")
        if progress:
            progress.redraw()
        stream.flush()


def run(args, stream=None):
    stream = stream or sys.stderr
    param = read_solver(args.solver)
    if args.level is not None:
        param.train_state.level = args.level
    for stage in _common.split_stages(args.stage):
        param.train_state.stage.append(stage)
    gpus = launch.parse_gpus(args.gpu) if args.gpu is not None else []
    if len(gpus) > 1 or (gpus and launch.mpi_module.launched_size() > 1):
        launch.multi_gpu_ready(args.gpu)
    if launch.wants_spawn(gpus):
        # Caffe's one command for several GPUs: one process per GPU, watched from here.
        return launch.spawn_per_gpu(gpus, getattr(args, "argv", None) or sys.argv[1:],
                                    stream)
    transport = launch.join(gpus, args.gpu)
    try:
        return _run_rank(args, param, transport, stream)
    except BaseException as exc:
        if transport is None or transport.size == 1 or isinstance(exc, SystemExit):
            raise
        # A rank that fails must take the job down, not leave the others waiting.
        stream.write("pyfacelayers train: error: rank %d: %s\n" % (transport.rank, exc))
        stream.flush()
        _abort_job(transport)
        raise
    finally:
        world.reset()


def _abort_job(transport):
    abort = getattr(transport, "abort", None)
    if abort is not None:
        # Give the launcher a moment to pass the message on: an abort ends every rank's
        # output at once. The other ranks are waiting in a collective meanwhile.
        time.sleep(1.0)
        abort(1)
    os._exit(1)


def _run_rank(args, param, transport, stream):
    root = transport is None or transport.rank == 0
    progress_ref = [None]
    handlers = [ConsoleHandler(progress_ref)]
    if args.log and root:  # only rank 0 writes the log
        handlers.append(add_log_file(args.log))
    log.addHandler(handlers[0])
    old_level = log.level
    log.setLevel(logging.INFO)
    try:
        if transport is None:
            device = _common.select_device(args.gpu, param)
        else:
            device = "GPU %d" % backend._state["device"] if backend.mode() == "gpu" else "CPU"
            log.info("Data-parallel training: %d ranks over %s", transport.size, transport.name)
            _log_ranks(transport, device)
        log.info("Using %s", device)
        solver = get_solver(param, source=args.solver, dtype=np.dtype(args.dtype),
                            allow_python_layers=getattr(args, "allow_python_layers", False) or None)
        if args.weights:
            for path in [w for w in args.weights.split(",") if w]:
                log.info("Finetuning from %s", path)
                solver.net.copy_from(path)
                for net in solver.test_nets:
                    net.copy_from(path)
        progress = Progress(solver, stream if root else _Quiet())
        progress_ref[0] = progress
        solver.add_iteration_callback(progress)
        resume = args.snapshot
        if resume == "latest" and not os.path.exists(resume):
            resume = _latest(param.snapshot_prefix) if root else None
            if transport is not None:  # every rank resumes the file rank 0 found
                resume = transport.allgather_json(resume)[0]
        if transport is not None:
            if resume:  # Caffe restores every rank from the file, then broadcasts
                log.info("Restoring previous solver status from %s", resume)
                solver.restore(resume)
                resume = None
            sync = DataParallel(solver, transport)
            sync.bcast()
            solver.add_callback(sync)
            if sync.layer_wise:
                solver.net.after_backward(sync)
        return _train(solver, resume, progress, getattr(args, "sigint_effect", "stop"),
                      getattr(args, "sighup_effect", "snapshot"))
    finally:
        if progress_ref[0]:
            progress_ref[0].finish()
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)


class _Quiet:
    """Where the progress line of ranks other than 0 goes."""

    def write(self, text):
        pass

    def flush(self):
        pass


def _log_ranks(transport, device):
    """Rank 0 lists every rank's process (an MPI launcher reports a dead rank by pid)."""
    import socket
    ranks = transport.allgather_json({"pid": os.getpid(), "host": socket.gethostname(),
                                      "device": device})
    for r, info in enumerate(ranks):
        log.info("Rank %d: pid %d on %s, %s", r, info["pid"], info["host"], info["device"])


def _latest(prefix):
    """The newest complete snapshot under ``prefix`` (None: start afresh), after removing
    the temporary files of writes a killed run left behind."""
    for path in stale_temp_files(prefix):
        log.info("Removing %s (a snapshot write that was interrupted)", path)
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc.strerror or exc)
    path = latest_snapshot(prefix)
    if path is None:
        log.info('No complete snapshot under snapshot_prefix "%s": starting from iteration 0',
                 prefix)
    else:
        log.info("Newest complete snapshot: %s", path)
    return path


def _train(solver, resume, progress, sigint_effect="stop", sighup_effect="snapshot"):
    presses = [0]

    def handler(effect, name):
        def on_signal(signum, frame):
            if effect == "stop":
                presses[0] += 1
                if presses[0] > 1 and signum == signal.SIGINT:
                    raise KeyboardInterrupt
                solver.request_stop()
                log.warning("%s: stopping after this iteration and snapshotting%s", name,
                            " (Ctrl-C again to stop at once)" if signum == signal.SIGINT
                            else "")
            elif effect == "snapshot":
                solver.request_snapshot()
                log.info("%s: snapshotting after this iteration", name)
        return on_signal

    in_main = threading.current_thread() is threading.main_thread()
    handlers = [(signal.SIGINT, handler(sigint_effect, "Ctrl-C"))]
    if hasattr(signal, "SIGHUP"):
        handlers.append((signal.SIGHUP, handler(sighup_effect, "SIGHUP")))
    previous = [(number, signal.signal(number, fn)) for number, fn in handlers] \
        if in_main else []
    try:
        solver.solve(resume)
    except KeyboardInterrupt:
        progress.finish()
        if solver.parallel and solver.parallel.size > 1:
            # The ranks were interrupted at different points: no agreed snapshot.
            log.error("Interrupted at once at iteration %d: no snapshot written (the ranks "
                      "of a job snapshot together only after an iteration)", solver.iter)
            return 130
        if solver.consistent:
            _snapshot_once(solver)
            log.warning("Interrupted at iteration %d; resume with --snapshot %s",
                        solver.iter, solver.last_snapshot[1])
        else:
            log.error("Interrupted in the middle of an update at iteration %d: no snapshot "
                      "written (the weights are half updated)", solver.iter)
        return 130
    finally:
        for number, fn in previous:
            signal.signal(number, fn)
    if solver.requested_early_exit:
        _snapshot_once(solver)
        progress.finish()
        log.warning("Stopped at iteration %d; resume with --snapshot %s", solver.iter,
                    solver.last_snapshot[1])
    return 0


def _snapshot_once(solver):
    if not solver.last_snapshot or solver.last_snapshot[0] != solver.iter:
        solver.snapshot()
