"""Running inputs through a target: classify each outcome, bound its time, keep
counts, save findings; and the built-in mutation loop (no atheris needed)."""

import collections
import hashlib
import json
import os
import random
import re
import signal
import time
import traceback

from .expected import FINDING, PENDING, classify
from .mutate import mutate


class Hang(BaseException):
    """Raised by the per-input alarm (a BaseException: harness code cannot swallow it)."""


def _on_alarm(signum, frame):
    raise Hang()


class Stats:
    """Counts by outcome ("ok", "expected:FormatError", "finding:IndexError", "hang", ...)
    plus the saved findings."""

    def __init__(self, target, findings_dir=None):
        self.target = target
        self.counts = collections.Counter()
        self.findings_dir = findings_dir
        self.saved = collections.Counter()
        self.signatures = set()
        self.started = time.time()

    @property
    def executed(self):
        return sum(self.counts.values())

    def record(self, data, kind, name, exc=None):
        key = "ok" if kind is None else ("hang" if kind == "hang" else "%s:%s" % (kind, name))
        self.counts[key] += 1
        if kind in (FINDING, PENDING, "hang") and self.findings_dir:
            self._save(data, key, exc)

    def _save(self, data, key, exc):
        tb = traceback.extract_tb(exc.__traceback__) if exc is not None else []
        where = "%s:%d" % (os.path.basename(tb[-1].filename), tb[-1].lineno) if tb else "?"
        message = _SIGNATURE_DIGITS.sub("#", str(exc))[:60] if exc is not None else ""
        signature = (key, where, message)
        if signature in self.signatures or self.saved[key] >= 20:
            return
        self.signatures.add(signature)
        self.saved[key] += 1
        os.makedirs(self.findings_dir, exist_ok=True)
        digest = hashlib.sha1(data).hexdigest()[:12]
        base = os.path.join(self.findings_dir, "%s-%s-%s" % (self.target, key.replace(":", "-"),
                                                             digest))
        with open(base + ".bin", "wb") as f:
            f.write(data)
        with open(base + ".txt", "w") as f:
            f.write("%s at %s\n" % (key, where))
            if exc is not None:
                f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))

    def summary(self):
        seconds = time.time() - self.started
        return {"target": self.target, "executed": self.executed,
                "seconds": round(seconds, 1),
                "rate_per_s": round(self.executed / seconds, 1) if seconds else None,
                "counts": dict(sorted(self.counts.items())),
                "findings": sum(v for k, v in self.counts.items()
                                if k.startswith(FINDING + ":")),
                "pending": sum(v for k, v in self.counts.items()
                               if k.startswith(PENDING + ":")),
                "hangs": self.counts.get("hang", 0)}

    def write(self, path):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.summary(), f, indent=1)
        os.replace(tmp, path)


def run_one(target, data, timeout=None):
    """(kind, name, exc) of one input: kind None (returned), "expected", "pending",
    "finding" or "hang" (over ``timeout`` seconds, when given)."""
    if timeout:
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        target.one_input(data)
        return None, None, None
    except Hang as exc:
        return "hang", "Hang", exc
    except RecursionError as exc:
        return FINDING, "RecursionError", exc
    except Exception as exc:  # classified: the point of the harness
        kind, name = classify(exc, target.documented)
        return kind, name, exc
    finally:
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, 0)


_SIGNATURE_DIGITS = re.compile(r"\d+")


class BuiltinFuzzer:
    """Seeded mutation of the seeds; an input whose outcome (exception type and message
    shape) is new joins the pool, a cheap stand-in for coverage feedback."""

    MAX_POOL = 400

    def __init__(self, target, seed=0):
        self.target = target
        self.rng = random.Random(seed)
        self.seeds = [s[:target.max_len] for s in target.seeds()] or [b""]
        self.pool = list(self.seeds)
        self.outcomes = set()

    def next_input(self):
        base = self.rng.choice(self.pool)
        return mutate(base, self.rng, self.pool, text=self.target.text,
                      max_len=self.target.max_len)

    def learn(self, data, kind, name, exc):
        if self.target.text == "structured" and name == "FormatError":
            return  # keep the pool parseable: its inputs should reach past the parser
        message = _SIGNATURE_DIGITS.sub("#", str(exc))[:80] if exc is not None else ""
        signature = (kind, name, message)
        if signature not in self.outcomes:
            self.outcomes.add(signature)
            if len(self.pool) < self.MAX_POOL:
                self.pool.append(data)
            else:
                self.pool[len(self.seeds) + self.rng.randrange(self.MAX_POOL - len(self.seeds))] = data
