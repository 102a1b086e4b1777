"""Multi-GPU training through pycaffe's API, the way BVLC Caffe's python/train.py
drives it, with ``import pyfacelayers as caffe``: one process per GPU
(multiprocessing), each setting its device, the solver count and rank, making the
solver, joining NCCL with the id the parent made, broadcasting rank 0's weights and
adding the NCCL object as a solver callback (and an after_backward hook when
layer_wise_reduce is on).

    python bench/parallel_pycaffe_train.py --solver S --gpus 0 [1 ...] [--snapshot F]
                                           [--timeout SECONDS] [--start-method fork]

Exit status 0 when every rank finished; a rank's failure is printed with its rank.
"""

import argparse
import multiprocessing
import queue
import sys
import time
import traceback

import pyfacelayers as caffe


def rank_main(solver_path, snapshot, gpus, uid, rank, failures):
    try:
        caffe.set_device(gpus[rank])
        caffe.set_mode_gpu()
        caffe.set_solver_count(len(gpus))
        caffe.set_solver_rank(rank)
        caffe.set_multiprocess(True)
        solver = caffe.get_solver(solver_path)  # (train.py says SGDSolver: SGD only)
        if snapshot:
            solver.restore(snapshot)
        nccl = caffe.NCCL(solver, uid)
        nccl.bcast()
        solver.add_callback(nccl)
        if solver.param.layer_wise_reduce:
            solver.net.after_backward(nccl)
        solver.step(solver.param.max_iter)
        if rank == 0:
            solver.snapshot()
    except Exception as exc:
        failures.put("rank %d (GPU %d): %s: %s" % (rank, gpus[rank], type(exc).__name__, exc))
        traceback.print_exc()
        sys.exit(1)


def train(solver_path, snapshot, gpus, timeout=300, start_method="spawn"):
    uid = caffe.NCCL.new_uid()
    caffe.init_log()
    caffe.log("Using devices %s" % gpus)
    # spawn by default: a forked child inherits the parent's CUDA driver state, which
    # CUDA does not support once initialised (BVLC's train.py forks; --start-method
    # fork checks whether that works here).
    context = multiprocessing.get_context(start_method)
    failures = context.Queue()
    processes = [context.Process(target=rank_main, daemon=True,
                                         args=(solver_path, snapshot, gpus, uid, r, failures))
                 for r in range(len(gpus))]
    for p in processes:
        p.start()
    deadline = time.time() + timeout
    for p in processes:
        p.join(timeout=max(0.0, deadline - time.time()))
    for rank, p in enumerate(processes):
        if p.is_alive():  # a rank stuck (e.g. NCCL waiting for a peer that failed)
            p.kill()
            p.join()
            failures.put("rank %d (GPU %d): still running after %d s, killed"
                         % (rank, gpus[rank], timeout))
    messages = []
    while True:
        try:
            messages.append(failures.get(timeout=0.5))
        except queue.Empty:
            break
    for message in messages:
        print("FAILED " + message)
    return 0 if not messages and all(p.exitcode == 0 for p in processes) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solver", required=True)
    parser.add_argument("--snapshot")
    parser.add_argument("--gpus", type=int, nargs="+", default=[0])
    parser.add_argument("--timeout", type=float, default=300,
                        help="seconds before ranks still running are killed")
    parser.add_argument("--start-method", choices=("spawn", "fork"), default="spawn",
                        help="how the rank processes start (BVLC's train.py: fork)")
    args = parser.parse_args()
    sys.exit(train(args.solver, args.snapshot, args.gpus, args.timeout, args.start_method))


if __name__ == "__main__":
    main()
