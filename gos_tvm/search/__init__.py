"""The GOS search: `tune`, its result, and the pieces it is made of (cost model, Pareto front,
work-directory store)."""
from .api import TuneResult, tune
from .cost_model import LatencyModel, spearman
from .gos import Decision, GOSearch, SearchOptions
from .pareto import Configuration, pareto_front

__all__ = ["tune", "TuneResult", "GOSearch", "SearchOptions", "Decision", "LatencyModel", "spearman",
           "Configuration", "pareto_front"]
