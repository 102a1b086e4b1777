#!/usr/bin/env bash
# The data-parallel GPU check (one CUDA machine, from the repository root, after the
# package is built: bash bench/gpu_check.sh builds it, or python setup.py build_ext
# --inplace):
#   bash bench/parallel_gpu_check.sh
# 1. the NCCL transport on device arrays with one rank (all-reduce, broadcast, the
#    side-stream all-reduce of layer_wise_reduce, gathering JSON),
# 2. training end to end through NCCL with one rank (pycaffe's API as BVLC's
#    python/train.py uses it) against the same solver trained without NCCL
#    (pyfacelayers train --gpu 0): final weights equal within 1e-5,
# 3. two ranks on one GPU (NCCL usually refuses a duplicate device: reported as such),
# 4. pyfacelayers train --gpu 0,0 and --gpu <past the count> (clear refusals).
# Each step has a time limit; the whole runs in well under a minute. Logs in $OUT.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/pfl_parallel_gpu_check}
rm -rf "$OUT/work"; mkdir -p "$OUT/work"
export PYTHONUNBUFFERED=1 PFL_ROOT="$ROOT"
# The installed package (bash bench/gpu_check.sh installs it), else this checkout built
# in place. Everything runs from $OUT/work, so the source tree is not imported by accident.
if (cd "$OUT/work" && $PY -c "import pyfacelayers._C" 2>/dev/null); then
  echo "using the installed pyfacelayers"
elif (cd "$OUT/work" && PYTHONPATH="$ROOT" $PY -c "import pyfacelayers._C" 2>/dev/null); then
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  echo "using the checkout's pyfacelayers (built in place)"
else
  echo "FAILED: pyfacelayers is not built: run bash bench/gpu_check.sh (or python setup.py build_ext --inplace) first"
  exit 1
fi
cd "$OUT/work"
status=0
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

stamp "== environment"
timeout 30 $PY - <<'PYEOF' 2>&1 | tee "$OUT/env.log"
import pyfacelayers as caffe, cupy
from cupy.cuda import nccl
print("cupy", cupy.__version__, "| NCCL", nccl.get_version(), "| devices",
      cupy.cuda.runtime.getDeviceCount(), "|", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
print("has_nccl():", caffe.has_nccl())
PYEOF
[ "${PIPESTATUS[0]}" = 0 ] || { echo "FAILED: pyfacelayers/cupy/NCCL not importable"; exit 1; }

stamp "== 1. NCCL transport, one rank, device arrays"
timeout 60 $PY - <<'PYEOF' 2>&1 | tee "$OUT/transport.log"
import numpy as np, cupy
from pyfacelayers.parallel.nccl import NCCLTransport, new_uid
t = NCCLTransport(1, 0, new_uid(), device=0)
a = cupy.arange(10, dtype=cupy.float32)
t.allreduce_sum(a); assert cupy.allclose(a, cupy.arange(10)), a
b = cupy.full(5, 3.0, cupy.float64); t.broadcast(b); assert float(b.sum()) == 15.0
c = cupy.ones(1 << 20, cupy.float32); req = t.start_allreduce_sum(c); req.wait()
assert float(c.sum()) == float(1 << 20)
assert t.allgather_json({"x": [1, 2]}) == [{"x": [1, 2]}]
assert t.mean_values([4.0]) == [4.0] and t.any_true([False, True]) == [False, True]
t.close()
print("OK: NCCL transport (1 rank): all-reduce, broadcast, side-stream all-reduce, gather")
PYEOF
[ "${PIPESTATUS[0]}" = 0 ] || status=1

stamp "== 2. training through NCCL (1 rank, pycaffe API) vs without NCCL (--gpu 0)"
timeout 120 $PY - "$OUT/work" <<'PYEOF' 2>&1 | tee "$OUT/train1.log"
import os, subprocess, sys
import numpy as np
sys.path.insert(0, os.path.join(os.environ["PFL_ROOT"], "bench"))
import parallel_fixture as fx
work = sys.argv[1]
try:
    import lmdb  # noqa: F401
    source = "lmdb"
except ImportError:
    source = "dummy"
print("data:", source)
runs = {}
for name in ("nccl", "plain"):
    solver, prefix = fx.write_job(os.path.join(work, name), name, 8, iters=6, snapshot=0,
                                  source=source)
    if name == "nccl":
        cmd = [sys.executable, os.path.join(os.environ["PFL_ROOT"], "bench/parallel_pycaffe_train.py"), "--solver", solver, "--gpus", "0"]
    else:
        cmd = [sys.executable, "-m", "pyfacelayers", "train", "--solver", solver, "--gpu", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    print("$", " ".join(cmd[1:]), "->", done.returncode)
    if done.returncode:
        print(done.stdout[-1500:], done.stderr[-3000:]); sys.exit(1)
    runs[name] = prefix + "_iter_6.caffemodel"
from pyfacelayers.solvers import snapshot as snap
a, b = (snap.read_weights(runs[k]) for k in ("nccl", "plain"))
worst = 0.0
for la, lb in zip(a.layer, b.layer):
    for x, y in zip(la.blobs, lb.blobs):
        x, y = np.array(x.data), np.array(y.data)
        worst = max(worst, float(np.linalg.norm(x - y) / max(1.0, np.linalg.norm(y))))
print("max relative weight difference NCCL(1 rank) vs plain GPU: %.2e" % worst)
assert worst <= 1e-5
print("OK: NCCL end to end with one rank")
PYEOF
[ "${PIPESTATUS[0]}" = 0 ] || status=1

stamp "== 2b. the same through fork (BVLC's train.py starts its ranks with fork)"
solver_fork=$(ls "$OUT"/work/nccl/nccl_solver.prototxt 2>/dev/null)
if [ -n "$solver_fork" ]; then
  timeout 90 $PY "$ROOT/bench/parallel_pycaffe_train.py" --solver "$solver_fork" --gpus 0 \
      --start-method fork --timeout 60 > "$OUT/fork.log" 2>&1
  rc=$?
  echo "fork start: exit $rc (0: pycaffe scripts that fork, as BVLC's train.py, work)"
  [ $rc = 0 ] || tail -5 "$OUT/fork.log"
fi

stamp "== 3. two ranks on one GPU (pycaffe API, gpus 0 0)"
timeout 90 $PY - "$OUT/work" <<'PYEOF' 2>&1 | tee "$OUT/train2.log"
import os, subprocess, sys
sys.path.insert(0, os.path.join(os.environ["PFL_ROOT"], "bench"))
import parallel_fixture as fx
work = sys.argv[1]
solver, prefix = fx.write_job(os.path.join(work, "dup"), "dup", 8, iters=4, snapshot=0,
                              source="dummy")
try:
    done = subprocess.run([sys.executable, os.path.join(os.environ["PFL_ROOT"], "bench/parallel_pycaffe_train.py"), "--solver",
                           solver, "--gpus", "0", "0", "--timeout", "45"],
                          capture_output=True, text=True, timeout=75)
except subprocess.TimeoutExpired:
    print("RESULT: two ranks on one GPU HUNG (killed after 75 s)"); sys.exit(1)
text = done.stdout + done.stderr
if done.returncode == 0 and os.path.exists(prefix + "_iter_4.caffemodel"):
    print("RESULT: NCCL accepted two ranks on one GPU; 4 iterations trained")
elif "FAILED rank" in text:
    print("RESULT: NCCL refused two ranks on one GPU, reported cleanly:")
    print("\n".join(l for l in text.splitlines() if l.startswith("FAILED rank")))
else:
    print("RESULT: unexpected outcome, exit %d" % done.returncode); print(text[-3000:]); sys.exit(1)
PYEOF
[ "${PIPESTATUS[0]}" = 0 ] || status=1

stamp "== 4. refusals"
solver=$(ls "$OUT"/work/plain/plain_solver.prototxt 2>/dev/null || ls "$OUT"/work/dup/dup_solver.prototxt)
for gpus in 0,0 0,99; do
  timeout 30 $PY -m pyfacelayers train --solver "$solver" --gpu $gpus > "$OUT/refuse_$gpus.log" 2>&1
  rc=$?
  echo "--gpu $gpus -> exit $rc: $(tail -1 "$OUT/refuse_$gpus.log")"
  [ $rc = 1 ] || status=1
done

stamp "== done (status $status)"
exit $status
