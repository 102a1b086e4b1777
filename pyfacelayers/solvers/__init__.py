"""Caffe's solvers with pycaffe's API.

    solver = pyfacelayers.solvers.get_solver("solver.prototxt")   # type from the file
    solver = pyfacelayers.solvers.SGDSolver("solver.prototxt")    # or a fixed type
    solver.net, solver.test_nets, solver.iter
    solver.step(10); solver.solve(resume_file=None); solver.snapshot(); solver.restore(p)
    solver.base_lr = 0.01                       # used from the next update on
    solver.add_callback(on_start, on_gradients) # pycaffe's hooks (no arguments)
    solver.add_iteration_callback(fn)           # fn(solver, loss) after each update

Log lines (Caffe's wording) go to the logger named "pyfacelayers".

Snapshots are Caffe's: ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` (iter,
learned_net, history, current_step), written atomically; Caffe's own solverstates
restore too (learned_net is looked up next to the solverstate first). What Caffe has
no field for -- each layer's ``get_state()`` (MarginInnerProduct's iteration counter)
and the numpy Generator state of every layer with an ``rng`` -- goes to
``<prefix>_iter_<N>.solverstate.pfl.json`` (ignored by Caffe, restored when present),
so a resumed run continues the exact trajectory. A snapshot taken after an interrupt
inside an iteration records the states from that iteration's start.

A snapshot set is written caffemodel, side file (it records the caffemodel's size and
CRC-32), solverstate: the solverstate marks the set complete. Every file goes through
a temporary ``.<name>.<random>.tmp``, fsync, rename and a folder fsync, so SIGKILL or
a power cut never leaves a partial file under a final name.
``snapshot.latest_snapshot(prefix)`` is the newest complete, consistent set (what
``pyfacelayers train --snapshot latest`` resumes from).

``solver.request_stop()`` (or ``set_action_function``, as Caffe's) stops after the
current iteration; ``solver.lr`` is the rate of the latest update.
"""

from .lr_policy import POLICIES, SolverError, learning_rate
from .solver import Solver
from .updates import (AdaDeltaRule, AdaGradRule, AdamRule, NesterovRule, RMSPropRule,
                      SGDRule)
from ..fileio import read_solver


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum."""
    rule_class = SGDRule


class NesterovSolver(Solver):
    """Nesterov's accelerated gradient."""
    rule_class = NesterovRule


class AdaGradSolver(Solver):
    rule_class = AdaGradRule


class RMSPropSolver(Solver):
    rule_class = RMSPropRule


class AdaDeltaSolver(Solver):
    rule_class = AdaDeltaRule


class AdamSolver(Solver):
    rule_class = AdamRule


SOLVERS = {cls.rule_class.type_name: cls for cls in
           (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
            AdamSolver)}


def solver_class(type_name, where="solver"):
    try:
        return SOLVERS[type_name]
    except KeyError:
        hint = [n for n in SOLVERS if n.lower() == str(type_name).lower()]
        raise SolverError('%s: unknown solver type "%s" (expected one of: %s)%s'
                          % (where, type_name, ", ".join(SOLVERS),
                             '; did you mean "%s"?' % hint[0] if hint else "")) from None


def get_solver(solver, **kwargs):
    """A solver of the type its parameters name (pycaffe's get_solver).

    ``solver``: a solver .prototxt path, prototxt text or SolverParameter.
    """
    from ..proto import caffe_pb2
    param = solver if isinstance(solver, caffe_pb2.SolverParameter) else read_solver(solver)
    where = "solver %s" % (solver if isinstance(solver, str) and "\n" not in solver
                           else "(SolverParameter)")
    return solver_class(param.type, where)(solver, **kwargs)



__all__ = ["SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
           "AdaDeltaSolver", "AdamSolver", "Solver", "SolverError", "get_solver",
           "solver_class", "POLICIES", "learning_rate"]
