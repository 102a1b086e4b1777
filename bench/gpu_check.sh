#!/usr/bin/env bash
# The one prepared GPU check (CUDA machine, run from the repository root):
#   bash bench/gpu_check.sh
# 1. build and install the package with its CUDA module (sm_90: H100/H200),
# 2. the GPU tests (tests/test_gpu.py, and tests/test_cudnn.py's checks against the
#    installed libcudnn; from the tests folder so the INSTALLED package is imported),
# 3. the benchmarks (bench/gpu_bench.py), ending with a summary table.
# Each step has its own time limit and the script goes on after a failure, so one
# problem does not hide the rest. Logs also go to $OUT (default /tmp/pfl_gpu_check).
# Reference data: PFL_SHARED, else ./shared (a copy inside the checkout), else ../shared;
# without it the fixture-based tests skip and the benchmark generates the net.
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/pfl_gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -z "${PFL_SHARED:-}" ]; then
  if [ -d "$ROOT/shared/fixtures" ]; then export PFL_SHARED="$ROOT/shared"
  elif [ -d "$ROOT/../shared/fixtures" ]; then export PFL_SHARED="$(cd "$ROOT/../shared" && pwd)"
  fi
fi
# nvcc off the PATH but in the usual place: use it (CMake looks for it to build _cuda).
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH" CUDACXX=/usr/local/cuda/bin/nvcc
fi
status=0
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

stamp "== environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
command -v nvcc >/dev/null && nvcc --version | tail -1 || echo "nvcc: not found (the CUDA module cannot be built)"
$PY - <<'EOF' 2>&1
import sys
print("python", sys.version.split()[0])
for name in ("numpy", "cupy", "torch", "pybind11", "google.protobuf"):
    try:
        mod = __import__(name, fromlist=["__version__"])
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING:", exc)
EOF
echo "PFL_SHARED=${PFL_SHARED:-<not found: fixture tests skip, the net is generated>}"

stamp "== build and install (PYFACELAYERS_CUDA_ARCH=90)"
PYFACELAYERS_CUDA_ARCH=90 PYFACELAYERS_BUILD_JOBS=${PYFACELAYERS_BUILD_JOBS:-16} \
  timeout 300 $PY -m pip install --no-build-isolation --no-deps --no-index \
  --disable-pip-version-check -q . >"$OUT/build.log" 2>&1
rc=$?
tail -15 "$OUT/build.log"
[ $rc -ne 0 ] && { echo "BUILD FAILED (rc $rc), see $OUT/build.log"; status=1; }

stamp "== import check"
(cd tests && $PY -c "
import pyfacelayers, pyfacelayers._C as C
print('package:', pyfacelayers.__file__)
try:
    import pyfacelayers._cuda as K
    print('CUDA module: yes, devices:', K.device_count())
except ImportError as exc:
    print('CUDA module: MISSING (%s)' % exc); raise SystemExit(1)
from pyfacelayers.gpu import cudnn
print('cuDNN (engine: CUDNN): %s' % (cudnn.available(),))
") || status=1

stamp "== pyfacelayers device_query --gpu 0 (caffe device_query)"
(cd tests && timeout 60 $PY -m pyfacelayers device_query --gpu 0) || status=1

stamp "== GPU tests (tests/test_gpu.py, tests/test_cudnn.py, tests/test_*gpu*.py)"
(cd tests && timeout 300 $PY -m pytest -q -p no:cacheprovider -rs --tb=short test_gpu.py test_cudnn.py \
  $(ls test_*gpu*.py | grep -v '^test_gpu.py$') >"$OUT/test_gpu.log" 2>&1)
rc=$?
tail -40 "$OUT/test_gpu.log"
[ $rc -ne 0 ] && { echo "GPU TESTS: rc $rc (1: failures, 5: nothing ran, 124: timeout)"; status=1; }

stamp "== benchmarks (bench/gpu_bench.py)"
(cd tests && timeout 240 $PY "$ROOT/bench/gpu_bench.py" >"$OUT/bench.log" 2>&1)
rc=$?
cat "$OUT/bench.log"
[ $rc -ne 0 ] && { echo "BENCHMARKS: rc $rc (1: a part failed, 124: timeout)"; status=1; }

stamp "== feeding the GPU from JPEGs (bench/gpu_feed.py)"
(cd tests && timeout 180 $PY "$ROOT/bench/gpu_feed.py" >"$OUT/feed.log" 2>&1)
rc=$?
tail -8 "$OUT/feed.log"
[ $rc -ne 0 ] && { echo "FEED BENCHMARK: rc $rc"; status=1; }

# Optional parts, each only where its script exists (other features' GPU checks).
for extra in "bench/margin_family.py --gpu" "bench/align.py --gpu 0" "bench/parallel_gpu_check.sh"; do
  script=${extra%% *}
  [ -f "$ROOT/$script" ] || continue
  stamp "== $extra"
  case $script in
    *.sh) (cd tests && timeout 120 bash "$ROOT/$extra" >"$OUT/$(basename $script).log" 2>&1) ;;
    *) (cd tests && timeout 120 $PY "$ROOT/$script" ${extra#* } >"$OUT/$(basename $script).log" 2>&1) ;;
  esac
  rc=$?
  tail -15 "$OUT/$(basename $script).log"
  [ $rc -ne 0 ] && { echo "$extra: rc $rc"; status=1; }
done

stamp "== done (status $status; logs in $OUT)"
exit $status
