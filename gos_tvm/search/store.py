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
so a kill at any instant leaves the previous content intact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_default))
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
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "weights").mkdir(exist_ok=True)
        self.database_dir = self.path / "database"
        self.database_dir.mkdir(exist_ok=True)
        self._check_identity(dict(identity))
        self._check_database_layout()
        self.measurements: dict[str, dict] = self._load_measurements()
        self.new_measurements: list[str] = []  # keys measured by this process (tests count repeats)

    # --- identity -------------------------------------------------------------------

    def _check_identity(self, identity: dict) -> None:
        path = self.path / "run.json"
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise ValueError(f"{path} is not valid JSON; this directory was not written by gos_tvm "
                                 "or was damaged: choose another work_dir") from None
            diff = {k: (old.get(k), identity.get(k)) for k in {**old, **identity}
                    if old.get(k) != identity.get(k)}
            if diff:
                detail = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(f"work_dir {self.path} holds a search of another run ({detail}). "
                                 "Use a new work_dir, or delete this one to start over.")
        else:
            write_json_atomic(path, identity)

    def _check_database_layout(self) -> None:
        """Refuse a work directory written before the run had one database (database/original,
        database/adapted, database/kernels: one per model), rather than mixing the layouts."""
        old = sorted(p.parent.name for p in self.database_dir.glob("*/database_tuning_record.json"))
        if old:
            raise ValueError(f"work_dir {self.path} was written by an older gos_tvm that kept one tuning database "
                             f"per model ({', '.join('database/' + n for n in old)}); this version keeps one "
                             "database for the whole run in database/. Use a new work_dir (or delete this one "
                             "to start over); the old directory is left as it is.")

    # --- measurements ---------------------------------------------------------------

    def _load_measurements(self) -> dict[str, dict]:
        path = self.path / "measurements.jsonl"
        out: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill: that measurement is simply redone
                out[row["key"]] = row
        return out

    def measured(self, key: str) -> dict | None:
        return self.measurements.get(key)

    def record_measurement(self, key: str, **data: Any) -> dict:
        if key in self.measurements:
            raise RuntimeError(f"measurement {key!r} already recorded: the search must reuse it")
        row = {"key": key, **data}
        with open(self.path / "measurements.jsonl", "a") as f:
            f.write(json.dumps(row, default=_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.measurements[key] = row
        self.new_measurements.append(key)
        return row

    # --- state and weights ----------------------------------------------------------

    def load_state(self) -> dict:
        path = self.path / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_state(self, state: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / "state.json", state)

    def weights_path(self, site: str, candidate: str) -> Path:
        return self.path / "weights" / f"{site}__{candidate}.npz"

    def save_weights(self, site: str, candidate: str, weights: Mapping[str, np.ndarray]) -> Path:
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
