"""MetaSchedule tuning and record verification.

    session.py   tuning sessions: `tune_primfuncs` / `tune_module`, the builder and runner they own
                 (`builder_and_runner`), the task scheduler, default cost model and strategy,
                 `compile_tuned`
    database.py  queries on a tuning database (records, best record, re-timing the best, what the
                 best records of a module add up to)
    delta.py     what replacing part of a model changes in its tuning tasks
    verify.py    whether a tuned schedule computes what the unscheduled kernel computes

Everything is re-exported here, so `from gos_tvm.hw.tuning import ...` works for all of them.
"""
from .database import *  # noqa: F401,F403
from .database import __all__ as _database_all
from .database import _workload_mod  # noqa: F401 - used by callers that normalise workloads
from .delta import *  # noqa: F401,F403
from .delta import __all__ as _delta_all
from .session import *  # noqa: F401,F403
from .session import __all__ as _session_all
from .session import _strategy_for  # noqa: F401 - tests check the default strategy choice
from .verify import *  # noqa: F401,F403
from .verify import __all__ as _verify_all

__all__ = sorted(set(_database_all) | set(_delta_all) | set(_session_all) | set(_verify_all))
