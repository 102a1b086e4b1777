"""Kill-and-resume check: train a small net with a snapshot every iteration, kill the
trainer with SIGKILL at random moments, resume each time from the newest complete
snapshot, and check that

* no final snapshot name (``<prefix>_iter_<N>.caffemodel``, ``.solverstate``,
  ``.solverstate.pfl.json``) ever holds a partial or corrupt file (temporary files of
  killed writes are ``.<name>.<random>.tmp``; they are counted and removed),
* every resume loads (no run fails; each logs the iteration it restored),
* the final weights, solver history and layer states equal, bit for bit, those of an
  uninterrupted run of the same solver.

    python bench/kill_resume.py [--kills 20] [--seed 1] [--iters 120] [--snapshot-every 1]
                                [--keep] [WORKDIR]

The net reads shuffled images (ImageData: its position and order are saved), has a
Dropout (its RNG state is saved) and a MarginInnerProduct (its lambda iteration counter
is saved). Kills land at delays drawn from a seeded RNG, so they hit start-up, restore,
iterations and snapshot writes; the summary says how many hit each. Exit status 0 when
every check passes.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

try:  # the installed package; else this checkout's (built in place)
    import pyfacelayers
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pyfacelayers

# The trainer processes import the same pyfacelayers as this one.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pyfacelayers.__file__)))

from pyfacelayers.fileio import read_caffemodel  # noqa: E402
from pyfacelayers.fileio.atomic import stale_temp_files  # noqa: E402
from pyfacelayers.solvers import snapshot as snap  # noqa: E402

PREFIX = "snap/net"  # relative to the work folder (the trainer's working directory)

NET = """name: "kill_resume"
layer { name: "data" type: "ImageData" top: "data" top: "label"
  transform_param { scale: 0.00390625 }
  image_data_param { source: "images.txt" root_folder: "images/" batch_size: 5
                     shuffle: true is_color: false } }
layer { name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
  inner_product_param { num_output: 12 weight_filler { type: "gaussian" std: 0.1 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "drop1" type: "Dropout" bottom: "fc1" top: "fc1"
  dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc2" type: "MarginInnerProduct" bottom: "fc1" bottom: "label"
  top: "fc2" top: "lambda"
  margin_inner_product_param { num_output: 4 type: DOUBLE
    weight_filler { type: "xavier" } base: 100 gamma: 0.5 power: 1 lambda_min: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
type: "Adam"
base_lr: 0.01
momentum: 0.9
momentum2: 0.999
lr_policy: "step"
gamma: 0.5
stepsize: {stepsize}
max_iter: {iters}
snapshot: {every}
snapshot_prefix: "{prefix}"
random_seed: {seed}
display: 0
"""


def make_workspace(folder, iters, every, seed):
    """Write the images, their list, the net and the solver into ``folder``."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, os.path.dirname(PREFIX)), exist_ok=True)
    lines = []
    for i in range(23):  # not a multiple of the batch: epochs wrap mid-batch
        label = i % 4
        pixels = rng.integers(0, 256, (6, 6)).astype(np.uint8)
        pixels[label, :] = 255  # a learnable hint of the class
        name = "img%02d.png" % i
        Image.fromarray(pixels).save(os.path.join(folder, "images", name))
        lines.append("%s %d" % (name, label))
    with open(os.path.join(folder, "images.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "net.prototxt"), "w") as f:
        f.write(NET)
    with open(os.path.join(folder, "solver.prototxt"), "w") as f:
        f.write(SOLVER.format(iters=iters, every=every, prefix=PREFIX, seed=seed,
                              stepsize=max(1, iters // 3)))


def _command(resume=None):
    cmd = [sys.executable, "-m", "pyfacelayers.cli", "train", "--solver", "solver.prototxt"]
    if resume:
        cmd += ["--snapshot", resume]
    return cmd


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYFACELAYERS_CPU_ONLY", "1")
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def _start(folder, resume, log_path):
    log = open(log_path, "ab")
    log.write(("\n=== %s\n" % " ".join(_command(resume))).encode())
    log.flush()
    proc = subprocess.Popen(_command(resume), cwd=folder, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, log


def run_uninterrupted(folder, every):
    """Train to max_iter in one go; returns (seconds in all, seconds to the first
    snapshot: start-up plus ``every`` iterations)."""
    first = os.path.join(folder, PREFIX + "_iter_%d.solverstate" % every)
    start = time.time()
    proc, log = _start(folder, None, os.path.join(folder, "train.log"))
    first_at = None
    while proc.poll() is None:
        if first_at is None and os.path.exists(first):
            first_at = time.time() - start
        time.sleep(0.002)
    log.close()
    total = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError("the uninterrupted run failed (rc %d); see %s"
                           % (proc.returncode, os.path.join(folder, "train.log")))
    return total, first_at if first_at is not None else total


def check_final_names(folder):
    """Parse every file under a final snapshot name; returns {iteration: set of the
    kinds present} and raises AssertionError naming a partial or corrupt file."""
    prefix = os.path.join(folder, PREFIX)
    base = os.path.basename(prefix)
    present = {}
    for name in sorted(os.listdir(os.path.dirname(prefix))):
        if name.startswith(".") or not name.startswith(base + "_iter_"):
            continue
        path = os.path.join(os.path.dirname(prefix), name)
        number, _, kind = name[len(base) + 6:].partition(".")
        iteration = int(number)
        try:
            if kind == "caffemodel":
                read_caffemodel(path)
            elif kind == "solverstate":
                state = snap.read_state(path)
                assert state.iter == iteration, "%s holds iter %d" % (path, state.iter)
            elif kind == "solverstate.pfl.json":
                with open(path) as f:
                    extra = json.load(f)
                assert extra["iter"] == iteration, "%s holds iter %s" % (path, extra["iter"])
            else:
                raise AssertionError("unexpected file %s" % path)
        except AssertionError:
            raise
        except Exception as exc:  # any reader error means a broken final file
            raise AssertionError("partial or corrupt file under a final name: %s (%s)"
                                 % (path, exc)) from None
        present.setdefault(iteration, set()).add(kind)
    for iteration, kinds in present.items():
        if "solverstate" in kinds:  # the commit mark: the set must be whole and consistent
            assert kinds == {"caffemodel", "solverstate", "solverstate.pfl.json"}, \
                "snapshot %d is incomplete: %s" % (iteration, sorted(kinds))
            snap.verify_snapshot(os.path.join(folder, "%s_iter_%d.solverstate"
                                              % (PREFIX, iteration)), iteration)
    return present


def _restored_iterations(log_path):
    """Per run in the log: the iteration it restored, or None (a run from the start,
    or one killed before it restored)."""
    with open(log_path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    found = []
    for run in text.split("\n=== ")[1:]:
        match = re.search(r"restored iteration ([0-9]+) from", run)
        found.append(int(match.group(1)) if match else None)
    return found


def _incomplete(present):
    """The iterations with snapshot files but no solverstate (a set not committed)."""
    return sorted(i for i, kinds in present.items() if "solverstate" not in kinds)


def _written_since(path, moment):
    try:
        return os.stat(path).st_mtime >= moment - 0.01
    except OSError:
        return False


def kill_and_resume(folder, kills, seed, first_at, total):
    """The kill loop, then a last run to the end. Returns a summary dict."""
    rng = np.random.default_rng(seed + 1000)
    log_path = os.path.join(folder, "train.log")
    prefix = os.path.join(folder, PREFIX)
    max_iter = None
    with open(os.path.join(folder, "solver.prototxt")) as f:
        for line in f:
            if line.startswith("max_iter:"):
                max_iter = int(line.split(":")[1])
    # A kill lands either during start-up and restore (some of the time), or a random
    # moment after a randomly drawn iteration's caffemodel appeared: about an equal
    # share of the iterations left after the resumed one, so that the kills spread
    # over the whole run and a last run finishes it.
    per_iter = max(total - first_at, 0.01) / max_iter
    events, resumes = [], 0
    while True:
        latest = snap.latest_snapshot(prefix)
        resume_iter = int(snap.read_state(latest).iter) if latest else 0
        if resume_iter >= max_iter:
            break
        resume_arg = "latest" if latest else None  # the trainer finds it itself
        resumes += bool(latest)
        killing = len(events) < kills
        target, delay = None, None
        early = rng.random() < 0.15
        if killing and early and max_iter - resume_iter > 10:
            # (well inside start-up and restore: the run must not finish first)
            delay = first_at * rng.uniform(0.3, 0.8)
        elif killing:
            share = (max_iter - resume_iter) / (kills - len(events) + 1)
            target = min(resume_iter + 1 + int(rng.integers(0, max(1, int(2 * share)))),
                         max_iter - 4)  # (room left, so that the kill lands before the end)
            delay = per_iter * rng.uniform(0, 1.5)
        temps_before = set(stale_temp_files(prefix))
        orphans_before = _incomplete(check_final_names(folder))
        started = time.time()
        proc, log = _start(folder, resume_arg, log_path)
        killed = False
        if target is not None:  # (a caffemodel of an earlier, incomplete set is older)
            mark = "%s_iter_%d.caffemodel" % (prefix, target)
            while proc.poll() is None and not _written_since(mark, started):
                time.sleep(0.0005)
        if delay is not None:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed = True
        rc = proc.wait()
        log.close()
        restored = _restored_iterations(log_path)[-1]
        if restored is not None and restored != resume_iter:
            raise AssertionError("a run resumed from iteration %d, not from the newest complete "
                                 "snapshot %d" % (restored, resume_iter))
        if not killed and rc != 0:
            raise AssertionError("a run from %s failed with rc %d; see %s"
                                 % (resume_arg or "the start", rc, log_path))
        if not killed:
            continue  # it reached max_iter (or the loop exits on the next check)
        # What this kill left (not what an earlier one left and this run had not
        # cleaned yet).
        temps = [t for t in stale_temp_files(prefix) if t not in temps_before]
        present = check_final_names(folder)
        orphans = [i for i in _incomplete(present) if i not in orphans_before]
        events.append({"delay_s": round(delay, 4), "after_iter": target,
                       "resumed_from": resume_iter,
                       "newest_complete": max([i for i, k in present.items()
                                               if "solverstate" in k], default=0),
                       "mid_write": [os.path.basename(t) for t in temps],
                       "incomplete_sets": orphans})
        # The temporary files stay: the next run (--snapshot latest) removes them, and an
        # incomplete newest set (killed between its files) must be skipped by it.
    check_final_names(folder)
    loaded = _restored_iterations(log_path)
    return {"kills": events, "resumes": resumes, "runs": len(loaded), "max_iter": max_iter,
            "restore_lines": sum(i is not None for i in loaded)}


def compare_final(ref_folder, folder, max_iter):
    """Assert that the final snapshots of the two folders hold identical training state."""
    name = "%s_iter_%d" % (PREFIX, max_iter)
    with open(os.path.join(ref_folder, name + ".caffemodel"), "rb") as f:
        ref_model = f.read()
    with open(os.path.join(folder, name + ".caffemodel"), "rb") as f:
        model = f.read()
    assert model == ref_model, "final weights differ from the uninterrupted run"
    a = snap.read_state(os.path.join(ref_folder, name + ".solverstate"))
    b = snap.read_state(os.path.join(folder, name + ".solverstate"))
    assert a.iter == b.iter == max_iter and a.current_step == b.current_step
    assert [h.SerializeToString() for h in a.history] == \
        [h.SerializeToString() for h in b.history], "solver history differs"
    with open(os.path.join(ref_folder, name + ".solverstate.pfl.json")) as f:
        ref_extra = json.load(f)
    with open(os.path.join(folder, name + ".solverstate.pfl.json")) as f:
        extra = json.load(f)
    assert extra == ref_extra, "layer or RNG states differ from the uninterrupted run"


def run(workdir, kills=20, seed=1, iters=120, every=1, out=sys.stdout):
    """The whole check; returns the summary dict (raises AssertionError on a failure)."""
    ref = os.path.join(workdir, "uninterrupted")
    killed = os.path.join(workdir, "killed")
    for folder in (ref, killed):
        make_workspace(folder, iters, every, seed)
    total, first_at = run_uninterrupted(ref, every)
    print("uninterrupted run: %d iterations, snapshot every %d, %.2f s (%.2f s to the first "
          "snapshot)" % (iters, every, total, first_at), file=out)
    start = time.time()
    summary = kill_and_resume(killed, kills, seed, first_at, total)
    compare_final(ref, killed, summary["max_iter"])
    summary["seconds"] = round(time.time() - start, 2)
    summary["uninterrupted_seconds"] = round(total, 2)
    report(summary, out)
    return summary


def report(summary, out):
    events = summary["kills"]
    for i, e in enumerate(events, 1):
        where = []
        if e["mid_write"]:
            where.append("mid-write: " + ", ".join(e["mid_write"]))
        if e["incomplete_sets"]:
            where.append("incomplete set(s) %s skipped" % e["incomplete_sets"])
        when = ("%.1f ms after caffemodel %d appeared" % (1000 * e["delay_s"], e["after_iter"])
                if e["after_iter"] is not None else "%.3f s after start" % e["delay_s"])
        print("kill %2d %s: resumed from %d, newest complete snapshot %d%s"
              % (i, when, e["resumed_from"], e["newest_complete"],
                 "; " + "; ".join(where) if where else ""), file=out)
    mid = sum(bool(e["mid_write"]) for e in events)
    between = sum(bool(e["incomplete_sets"]) for e in events)
    early = sum(e["newest_complete"] == e["resumed_from"] for e in events)
    print("%d kills (%d mid-write: a temporary file left; %d left an uncommitted set: files "
          "of a snapshot but not its solverstate; %d before the run's first new snapshot), "
          "%d resumes, %d runs, %d restores logged; %.1f s" %
          (len(events), mid, between, early, summary["resumes"], summary["runs"],
           summary["restore_lines"], summary["seconds"]), file=out)
    print("no partial or corrupt file under a final name; every resume loaded; final "
          "weights, history and layer/RNG states equal the uninterrupted run: OK", file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", nargs="?", help="work folder (default: a temporary one)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--iters", type=int, default=120)
    ap.add_argument("--snapshot-every", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    args = ap.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="pfl_kill_resume_")
    try:
        run(workdir, args.kills, args.seed, args.iters, args.snapshot_every)
    except AssertionError as exc:
        print("FAILED: %s (work folder %s)" % (exc, workdir), file=sys.stderr)
        return 1
    finally:
        if not args.workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
