"""The replacement operator space: rewrite rules and candidate generation for one operator.

    from gos_tvm.instructions import library
    from gos_tvm.space import candidates, apply

    conv = library.conv2d((1, 32, 16, 16), 64, 3, padding=1)
    for cand in candidates(conv, max_flops_ratio=0.5):
        print(cand)                       # rule, params, FLOPs, params, structural hash
    ds = apply(conv, "depthwise_separable")
    ds_lr = ds.apply("low_rank", rank=8)  # composition: low-rank on the pointwise part

Modules: `match` (finding sites in a program), `emit` (building and splicing
subgraphs), `factor` (closed-form weights), `rules` (the families and their legality),
`candidates` (`Candidate`, `apply`, `candidates`, `explain`).
A new family is a `Rule` subclass passed to `register_rule`.
"""
from .candidates import Candidate, CandidateList, FamilyReport, Step, apply, candidates, explain
from .match import Site, find_sites, match_site
from .rules import RULES, Rule, SpaceOptions, get_rule, register_rule, unregister_rule

__all__ = ["candidates", "explain", "apply", "Candidate", "CandidateList", "FamilyReport", "Step", "Site",
           "find_sites", "match_site", "RULES", "Rule", "SpaceOptions", "get_rule", "register_rule",
           "unregister_rule"]
