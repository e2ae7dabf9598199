"""Keep MetaSchedule's logging set-up from failing on handlers it did not create.

Every `tune_tir` / `tune_relax` calls `meta_schedule.logging.create_loggers`, which rebuilds
Python's logging with `logging.config.dictConfig` and lists the *names* of the handlers already
on the logger ``tvm.s_tir.meta_schedule`` as that logger's handlers in the new config.  A handler
there that MetaSchedule did not create breaks every later tuning run in the process:

* an unnamed one gives ``AttributeError: 'NoneType' object has no attribute 'format'`` (in
  ``_parameterize_config``).  pytest 9.2 (9.0 did not) attaches its unnamed capture handler to every
  non-propagating logger during each test, and MetaSchedule's logger is non-propagating after
  its first run, so the second tuning run in a test session failed;
* a named one that is not in MetaSchedule's config gives ``ValueError: Unable to configure logger
  'tvm.s_tir.meta_schedule'``.

`metaschedule_logging()` detaches such handlers for the duration of a tuning run and puts them
back afterwards, so a process (a test session, a notebook, a user's script with its own logging
configuration) can tune any number of times.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

METASCHEDULE_LOGGER = "tvm.s_tir.meta_schedule"
# The handlers `create_loggers` itself puts on that logger (see its default config).
_OWN_HANDLERS = frozenset({f"{METASCHEDULE_LOGGER}.console", f"{METASCHEDULE_LOGGER}.file"})


def foreign_handlers(logger: logging.Logger | None = None) -> list[logging.Handler]:
    """Handlers on MetaSchedule's logger that MetaSchedule's own configuration did not create."""
    logger = logger or logging.getLogger(METASCHEDULE_LOGGER)
    return [h for h in logger.handlers if h.get_name() not in _OWN_HANDLERS]


@contextlib.contextmanager
def metaschedule_logging() -> Iterator[None]:
    """Run a MetaSchedule tuning call with only MetaSchedule's own handlers on its logger; the
    others are re-attached when the call returns or raises."""
    logger = logging.getLogger(METASCHEDULE_LOGGER)
    detached = foreign_handlers(logger)
    for handler in detached:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in detached:
            logger.addHandler(handler)
