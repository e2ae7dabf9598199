"""The work directory: everything a search knows, on disk, so a killed run resumes.

    work_dir/
      run.json              what this directory is for (model fingerprint, device); a
                            different model or device is refused, never overwritten
      measurements.jsonl    append-only log of every device measurement, one JSON per line
      state.json            search decisions so far (replaced atomically)
      cost_model.json       samples of the XGBoost latency model (warm start for later runs)
      database/             the run's one MetaSchedule tuning database (original model, site and
                            candidate kernels, adapted model); database/logs/ MetaSchedule's logs
      weights/              fitted replacement weights, one .npz per (site, candidate)
      report.json, pareto.png

Every file is written atomically (temporary file + rename) or appended line by line,
so a kill at any instant leaves the previous content intact: a measurement line cut short
by a kill is ignored with a warning (and measured again), and the next append starts on a
fresh line.  Nothing is written until the run's inputs and device have been checked: a
`WorkDir` only reads (and compares run.json) until its first write, which claims the
directory by writing run.json.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .validate import UserError

_log = logging.getLogger("gos_tvm.store")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True, default=_default))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class WorkDir:
    """A search's directory: run identity, measurement log, state and weights."""

    def __init__(self, path: str | os.PathLike, identity: Mapping[str, Any]):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"work_dir {self.path} is a file, not a directory: choose another work_dir")
        # Compared as JSON holds it (tuples become lists, numpy scalars numbers).
        self.identity = json.loads(json.dumps(dict(identity), default=_default))
        self._claimed = False
        self._check_identity(self.identity)
        self._check_database_layout()
        self.measurements: dict[str, dict] = self._load_measurements()
        self.new_measurements: list[str] = []  # keys measured by this process (tests count repeats)

    @property
    def database_dir(self) -> Path:
        """The MetaSchedule databases' directory (claims the work directory: tuning writes there)."""
        self.claim()
        return self.path / "database"

    def claim(self) -> None:
        """Create the directory and write run.json: called by the first write, never before."""
        if self._claimed:
            return
        for sub in ("", "weights", "database"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        if not (self.path / "run.json").exists():
            write_json_atomic(self.path / "run.json", self.identity)
        # MetaSchedule's JSON databases are appended line by line too, and TVM refuses to open one
        # whose last line a kill cut short ("Unexpected end of string"): drop such a line.
        for db_file in sorted((self.path / "database").glob("database_*.json")):
            drop_torn_last_line(db_file)
        self._claimed = True

    # --- identity -------------------------------------------------------------------

    def _check_identity(self, identity: dict) -> None:
        check_identity(self.path, identity)

    def _check_database_layout(self) -> None:
        """Refuse a work directory written before the run had one database (database/original,
        database/adapted, database/kernels: one per model), rather than mixing the layouts."""
        old = sorted(p.parent.name for p in (self.path / "database").glob("*/database_tuning_record.json"))
        if old:
            raise UserError(f"work_dir {self.path} was written by an older gos_tvm that kept one tuning database "
                             f"per model ({', '.join('database/' + n for n in old)}); this version keeps one "
                             "database for the whole run in database/. Use a new work_dir (or delete this one "
                             "to start over); the old directory is left as it is.")

    # --- measurements ---------------------------------------------------------------

    def _load_measurements(self) -> dict[str, dict]:
        path = self.path / "measurements.jsonl"
        out: dict[str, dict] = {}
        if not path.exists():
            return out
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a kill: that measurement is simply redone.
                _log.warning("%s line %d: ignoring a measurement cut short (a killed run); it is measured again",
                             path, n)
                continue
            if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                raise UserError(f"{path} line {n} is not a measurement (no 'key'): the log was edited or damaged; "
                                "delete that line to resume, or use a new work_dir")
            out[row["key"]] = row
        return out

    def measured(self, key: str) -> dict | None:
        return self.measurements.get(key)

    def record_measurement(self, key: str, **data: Any) -> dict:
        if key in self.measurements:
            raise RuntimeError(f"measurement {key!r} already recorded: the search must reuse it")
        self.claim()
        row = {"key": key, **data}
        path = self.path / "measurements.jsonl"
        with open(path, "ab+") as f:
            # After a kill mid-line the log ends without a newline: start this record on a fresh line,
            # so that the torn fragment stays a line of its own (ignored) and this one stays readable.
            torn = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
            f.write((b"\n" if torn else b"") + (json.dumps(row, default=_default) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.measurements[key] = row
        self.new_measurements.append(key)
        return row

    # --- state and weights ----------------------------------------------------------

    def load_state(self) -> dict:
        path = self.path / "state.json"
        if not path.exists():
            return {}
        try:
            state = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            state, why = None, f"{type(err).__name__}: {err}"
        else:
            why = f"it holds a {type(state).__name__}, not an object"
        if not isinstance(state, dict):
            raise UserError(f"{path} is damaged ({why}). To restart the search from the measurement log "
                            f"(no device measurement is repeated): move state.json and weights/ aside, e.g. "
                            f"`mv {path} {path}.bad && mv {self.path / 'weights'} {self.path / 'weights.bad'}`, "
                            "and rerun")
        return state

    def save_state(self, state: Mapping[str, Any]) -> None:
        self.claim()
        write_json_atomic(self.path / "state.json", state)

    def weights_path(self, site: str, candidate: str) -> Path:
        return self.path / "weights" / f"{site}__{candidate}.npz"

    def save_weights(self, site: str, candidate: str, weights: Mapping[str, np.ndarray]) -> Path:
        self.claim()
        path = self.weights_path(site, candidate)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **weights)
        os.replace(tmp, path)
        return path

    def load_weights(self, site: str, candidate: str) -> dict[str, np.ndarray] | None:
        path = self.weights_path(site, candidate)
        if not path.exists():
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}


def drop_torn_last_line(path: Path) -> bool:
    """Cut a line-per-record file back to its last complete line (a kill mid-append leaves the last
    line without its newline).  Returns True if something was dropped (with a warning)."""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return False
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    _log.warning("%s: dropped a record cut short by a kill (%d bytes); it is tuned again", path, len(data) - keep)
    return True


def check_identity(path: str | os.PathLike, identity: Mapping[str, Any], *, partial: bool = False) -> None:
    """Refuse (UserError, nothing written) a work directory whose run.json records another run.

    Every key of both is compared: a key recorded by the first run and absent now (an emulated run
    resumed as the board) differs.  With `partial`, only the keys of `identity` are compared (the
    command line checks what it knows before it trains a model).
    """
    path = Path(path) / "run.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict):
        raise UserError(f"{path} is not valid JSON; this directory was not written by gos_tvm "
                        "or was damaged: choose another work_dir")
    identity = json.loads(json.dumps(dict(identity), default=_default))
    keys = identity if partial else {**old, **identity}
    diff = {k: (old.get(k), identity.get(k)) for k in sorted(keys) if old.get(k) != identity.get(k)}
    if diff:
        detail = "; ".join(f"{k}: {_short(a)} there, {_short(b)} now" for k, (a, b) in diff.items())
        older = (" It was written by an older gos_tvm that recorded less about its run, so it cannot be resumed."
                 if "calib_data" not in old else "")
        raise UserError(f"work_dir {path.parent} holds a search of another run ({detail}).{older} Rerun with the "
                        "same model, data, device, budget and options to resume; otherwise use a new work_dir "
                        "(or delete this one to start over)")


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_database_dir(path: str | Path | None) -> Path | None:
    """A warm-start database directory (an earlier run's WORK_DIR/database), checked before any device starts."""
    if path is None:
        return None
    path = Path(path)
    if not (path / "database_tuning_record.json").is_file() or not (path / "database_workload.json").is_file():
        raise UserError(f"warm_start_database {path} holds no MetaSchedule JSON database (database_workload.json "
                         "and database_tuning_record.json): pass an earlier run's WORK_DIR/database")
    return path
