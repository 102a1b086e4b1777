"""Long fuzz runs: ``python -m fuzz.run [--targets a,b] [--runs N] [--seconds S]``.

Each target runs in a child process (so a crash or hang of the interpreter is caught
and counted, its input saved, and the run goes on in a fresh child) with its address
space limited (``--memory-mb``, RLIMIT_AS) and each input bounded in time
(``--timeout``). With atheris installed (``pip install atheris``) the child is
coverage-guided (libFuzzer); otherwise, or with ``--engine builtin``, it uses the
built-in mutator. Findings go to ``<out>/findings/``; per-chunk summaries to
``<out>/*.json``; a table per target is printed at the end.
"""

import argparse
import glob
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TARGETS = ["prototxt", "net", "caffemodel", "binaryproto", "solverstate", "kernels",
                   "layers"]


def _limit_memory(megabytes):
    if megabytes:
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class Current:
    """The input being run, in a file the parent reads back after a crash or hang."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def set(self, data):
        os.pwrite(self.fd, struct.pack("<Q", len(data)) + data, 0)

    @staticmethod
    def read(path):
        try:
            with open(path, "rb") as f:
                raw = f.read()
            (n,) = struct.unpack("<Q", raw[:8])
            return raw[8:8 + n]
        except (OSError, struct.error):
            return None


def worker(args):
    """The child: run ``args.runs`` inputs of one target, flushing stats as it goes."""
    _limit_memory(args.memory_mb)
    use_atheris = args.engine == "atheris"
    if use_atheris:
        import atheris
        # Instrument before anything imports the package, so its code reports coverage.
        with atheris.instrument_imports(include=["pyfacelayers", "fuzz", "google.protobuf"]):
            from .engine import BuiltinFuzzer, Stats, run_one
            from .targets import load
            target = load(args.worker)
    else:
        from .engine import BuiltinFuzzer, Stats, run_one
        from .targets import load
        target = load(args.worker)
    findings = os.path.join(args.out, "findings")
    stats_path = os.path.join(args.out, "%s-%s.json" % (args.worker, args.chunk))
    current = Current(stats_path + ".current")
    stats = Stats(args.worker, findings)
    stats.write(stats_path)
    deadline = time.time() + args.seconds if args.seconds else None
    last_flush = [time.time()]

    def flush(force=False):
        if force or time.time() - last_flush[0] > 2:
            stats.write(stats_path)
            last_flush[0] = time.time()

    if use_atheris:
        corpus = os.path.join(args.out, "corpus", args.worker)
        os.makedirs(corpus, exist_ok=True)
        for i, seed in enumerate(target.seeds()):
            with open(os.path.join(corpus, "seed-%03d" % i), "wb") as f:
                f.write(seed[:target.max_len])

        def test_one(data):
            current.set(data)
            kind, name, exc = run_one(target, data)
            stats.record(data, kind, name, exc)
            if stats.executed >= args.runs or (deadline and time.time() > deadline):
                stats.write(stats_path)
                from .common import cleanup
                cleanup()
                os._exit(0)  # libFuzzer would go on; atexit handlers do not run
            flush()

        argv = [sys.argv[0], "-runs=%d" % (args.runs + 10 ** 6), "-timeout=%d" % args.timeout,
                "-rss_limit_mb=%d" % args.memory_mb, "-max_len=%d" % target.max_len,
                "-seed=%d" % (args.seed + 1), "-print_final_stats=0",
                "-artifact_prefix=%s/%s-" % (findings, args.worker), corpus]
        os.makedirs(findings, exist_ok=True)
        atheris.Setup(argv, test_one)
        atheris.Fuzz()
        return
    fuzzer = BuiltinFuzzer(target, seed=args.seed)
    inputs = list(fuzzer.seeds)
    while stats.executed < args.runs and not (deadline and time.time() > deadline):
        data = inputs.pop() if inputs else fuzzer.next_input()
        current.set(data)
        kind, name, exc = run_one(target, data, timeout=args.timeout)
        stats.record(data, kind, name, exc)
        fuzzer.learn(data, kind, name, exc)
        flush()
    stats.write(stats_path)


def _child(args, target, runs, chunk, seed, seconds):
    cmd = [sys.executable, "-m", "fuzz.run", "--worker", target, "--runs", str(runs),
           "--chunk", chunk, "--seed", str(seed), "--out", args.out, "--engine", args.engine,
           "--timeout", str(args.timeout), "--memory-mb", str(args.memory_mb)]
    if seconds:
        cmd += ["--seconds", str(int(seconds))]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if args.memory_mb and "PYFACELAYERS_MEMORY_LIMIT" not in env:
        # The library's own limit (ResourceLimitError) must act before the address-space
        # limit does (a bare MemoryError): a quarter leaves room for temporaries.
        env["PYFACELAYERS_MEMORY_LIMIT"] = "%dM" % max(1, args.memory_mb // 4)
    log = open(os.path.join(args.out, "%s-%s.log" % (target, chunk)), "wb")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_target(args, target):
    """Run ``target`` in children until ``args.runs`` inputs (or ``args.seconds``) are
    done; a child that dies or stalls is recorded as a crash/hang and replaced."""
    done, chunk_no, start = 0, 0, time.time()
    crashes, hangs = [], []
    while done < args.runs:
        left_s = args.seconds - (time.time() - start) if args.seconds else None
        if left_s is not None and left_s < 1:
            break
        chunk = "%s-%d" % (args.tag, chunk_no)
        stats_path = os.path.join(args.out, "%s-%s.json" % (target, chunk))
        proc = _child(args, target, args.runs - done, chunk, args.seed + 1000 * chunk_no,
                      left_s)
        # The child rewrites its .current file before every input: when that stops for
        # long past the per-input timeout (which SIGALRM enforces in Python code), the
        # child is stuck where the alarm cannot reach (C++ with the GIL released).
        last_change, stalled = time.time(), False
        while proc.poll() is None:
            time.sleep(1)
            stats = _read_json(stats_path)
            try:
                last_change = max(last_change, os.path.getmtime(stats_path + ".current"))
            except OSError:
                pass
            if time.time() - last_change > max(3 * args.timeout, 30) and stats is not None:
                stalled = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        stats = _read_json(stats_path) or {"executed": 0}
        finished = proc.returncode == 0 and not stalled
        # libFuzzer (atheris) exits with 70 when an input passes -timeout.
        stalled = stalled or (args.engine == "atheris" and proc.returncode == 70)
        if not finished:
            data = Current.read(stats_path + ".current")
            kind = "hang" if stalled else "crash"
            os.makedirs(os.path.join(args.out, "findings"), exist_ok=True)
            saved = os.path.join(args.out, "findings", "%s-%s-%s.bin" % (target, kind, chunk))
            if data is not None:
                with open(saved, "wb") as f:
                    f.write(data)
            (hangs if stalled else crashes).append(saved)
            stats["executed"] += 1
            stats.setdefault("counts", {})[kind] = stats.get("counts", {}).get(kind, 0) + 1
            stats["child_exit"] = proc.returncode
            with open(stats_path, "w") as f:
                json.dump(stats, f, indent=1)
            if stats["executed"] <= 1 and chunk_no > 3:
                break  # dies at once: do not loop
        done += stats["executed"]
        chunk_no += 1
    return crashes, hangs


def collect(out, targets=None):
    """Totals per target over every chunk summary in ``out`` (a folder, a list of
    folders, or of summary files)."""
    totals = {}
    paths = []
    for place in [out] if isinstance(out, str) else out:
        paths += sorted(glob.glob(os.path.join(place, "*.json"))) if os.path.isdir(place) \
            else [place]
    for path in paths:
        stats = _read_json(path)
        if not stats or "target" not in stats:
            continue
        if targets and stats["target"] not in targets:
            continue
        t = totals.setdefault(stats["target"], {"executed": 0, "seconds": 0.0, "counts": {}})
        t["executed"] += stats["executed"]
        t["seconds"] += stats.get("seconds") or 0
        for key, value in stats.get("counts", {}).items():
            t["counts"][key] = t["counts"].get(key, 0) + value
    return totals


def table(totals):
    lines = ["%-12s %10s %8s %7s %6s %8s %8s  %s" % (
        "target", "inputs", "inputs/s", "crashes", "hangs", "findings", "pending",
        "outcomes (returned / documented exceptions)")]
    grand = 0
    for name, t in totals.items():
        c = t["counts"]
        findings = sum(v for k, v in c.items() if k.startswith("finding:"))
        pending = sum(v for k, v in c.items() if k.startswith("pending:"))
        detail = ", ".join("%s %d" % (k.replace("expected:", ""), v) for k, v in
                           sorted(c.items(), key=lambda kv: -kv[1])
                           if k == "ok" or k.startswith("expected:"))
        rate = t["executed"] / t["seconds"] if t["seconds"] else 0
        lines.append("%-12s %10d %8.0f %7d %6d %8d %8d  %s" % (
            name, t["executed"], rate, c.get("crash", 0), c.get("hang", 0), findings,
            pending, detail))
        grand += t["executed"]
    lines.append("%-12s %10d" % ("total", grand))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--runs", type=int, default=100000, help="inputs per target")
    parser.add_argument("--seconds", type=float, default=0, help="time per target (0: none)")
    parser.add_argument("--engine", choices=["auto", "atheris", "builtin"], default="auto")
    parser.add_argument("--timeout", type=int, default=10, help="seconds per input")
    parser.add_argument("--memory-mb", type=int, default=4096, help="address space limit")
    parser.add_argument("--out", default=os.path.join(ROOT, "fuzz-results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--summary", nargs="*", metavar="PLACE",
                        help="only print the table of the runs in --out, or in the given "
                             "folders / summary files")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", default="0", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if args.engine == "auto":
        try:
            import atheris  # noqa: F401
            args.engine = "atheris"
        except ImportError:
            args.engine = "builtin"
    if args.worker:
        return worker(args)
    targets = [t for t in args.targets.split(",") if t]
    if args.summary is not None:
        print(table(collect(args.summary or args.out, targets)))
        return 0
    for target in targets:
        crashes, hangs = run_target(args, target)
        print("%s: done (%s engine)%s" % (target, args.engine,
              "".join("\n  %s" % p for p in crashes + hangs)), flush=True)
    print(table(collect(args.out, targets)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
