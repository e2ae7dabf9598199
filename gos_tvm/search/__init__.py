"""The GOS search: `tune`, its result, and the parts it is made of.

    api.py         `tune` and `TuneResult`
    gos.py         the GOS loop (`GOSearch`)
    strategies.py  search strategies (greedy least-efficient-first with bisection, evolution)
    distillation.py  end-to-end distillation of configurations inside the search (`SearchDistiller`)
    measurer.py    where latencies come from: the tuned device (`TunedMeasurer`, its MetaSchedule
                   `TuningParts`) or a fake one (`FakeMeasurer`)
    cost_model.py  the program-level latency model (`ProgramLatencyModel`, XGBoost `LatencyModel`)
    results.py     typed inputs and outputs (`SearchOptions`, `Decision`, `Candidate`, `SearchOutcome`)
    pareto.py      configurations and the Pareto front;  adapt.py  a configuration as a model
    store.py       the work directory (resume);  report.py  the JSON report and the Pareto plot
"""
from .api import TuneResult, tune
from .cost_model import LatencyModel, ProgramLatencyModel, spearman
from .gos import GOSearch
from .measurer import FakeMeasurer, Measurer, TunedMeasurer, TuningParts
from .pareto import Configuration, pareto_front
from .results import Candidate, Decision, SearchOptions, SearchOutcome
from .strategies import Evolution, GreedyLeastEfficientFirst, SearchStrategy, default_strategies

__all__ = ["tune", "TuneResult", "GOSearch", "SearchOptions", "SearchOutcome", "Decision", "Candidate",
           "LatencyModel", "ProgramLatencyModel", "spearman", "Configuration", "pareto_front", "Measurer",
           "TunedMeasurer", "FakeMeasurer", "TuningParts", "SearchStrategy", "GreedyLeastEfficientFirst",
           "Evolution", "default_strategies"]
