"""Candidates: programs reached from an operator's program by a chain of rewrites.

A `Candidate` remembers the chain (`steps`), so its weights can be initialised in closed
form from the original operator's weights by replaying each step's algebra, and so a
rule can be applied to the output of another rule (`Candidate.apply`): the second rule
rewrites a site that the first one created.  `candidates` enumerates such chains up to
a depth, deduplicated by structural hash and ordered by estimated cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..instructions.program import OpProgram
from .match import Site, find_sites, match_site
from .rules import RULES, SpaceOptions, get_rule


@dataclass(frozen=True, eq=False)
class Step:
    """One rewrite: `rule` with `params` applied at `site` of `before`, giving `after`.

    `roles` maps the rule's weight roles (e.g. 'dw', 'pw') to the new weights' names.
    """

    rule: str
    site: Site
    params: Mapping[str, int]
    roles: Mapping[str, str]
    before: OpProgram
    after: OpProgram

    def init(self, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Weights of `after` from weights of `before`: new ones in closed form, the rest carried over."""
        values = get_rule(self.rule).init(self.site.effective_weight(weights), self.site, **self.params)
        by_name = {self.roles[role]: v for role, v in values.items()}
        out = {}
        for name, shape in self.after.weights.items():
            # A 1x1 conv emitted as a pointwise map stores (O, C) where the algebra gives (O, C, 1, 1):
            # the same elements in the same row-major order.
            value = by_name[name] if name in by_name else weights[name]
            out[name] = np.ascontiguousarray(np.asarray(value, dtype=np.float32).reshape(shape))
        return out

    def describe(self) -> dict[str, Any]:
        return {"rule": self.rule, "site": self.site.contract, **self.params}


@dataclass(frozen=True, eq=False)
class Candidate:
    """A replacement program for an operator, and how it was derived.

    Attributes:
        program: the replacement (same input names/shapes and output shape as `origin`).
        origin: the original operator's program.
        steps: the rewrites from `origin` to `program`; empty for the original itself.
    """

    program: OpProgram
    origin: OpProgram
    steps: tuple[Step, ...] = field(default=())

    @staticmethod
    def original(program: OpProgram) -> "Candidate":
        """The operator itself, as the "keep it" choice of a search."""
        return Candidate(program, program, ())

    # --- what it is -------------------------------------------------------------------------

    @property
    def is_original(self) -> bool:
        return not self.steps

    @property
    def rule(self) -> str:
        """'original', a rule name, or rule names joined by '>' for a composition (applied left to right)."""
        return ">".join(s.rule for s in self.steps) if self.steps else "original"

    @property
    def rule_params(self) -> dict[str, Any]:
        """The rule's parameters; for a composition {'steps': [{'rule', 'site', **params}, ...]}."""
        if len(self.steps) == 1:
            return dict(self.steps[0].params)
        return {"steps": [s.describe() for s in self.steps]} if self.steps else {}

    @property
    def flops(self) -> int:
        return self.program.flops

    @property
    def bytes(self) -> int:
        return self.program.bytes

    @property
    def params(self) -> int:
        """Number of weight elements."""
        return self.program.params

    @property
    def structural_hash(self) -> str:
        return self.program.structural_hash

    @property
    def flops_ratio(self) -> float:
        """FLOPs relative to the original operator."""
        return self.flops / max(self.origin.flops, 1)

    def new_sites(self) -> list[Site]:
        """The sites the last rewrite created (all sites for the original)."""
        sites = find_sites(self.program)
        if not self.steps:
            return sites
        # Compare nodes by value, not name: the replacement's last node takes the name of the
        # site's result, so a name can survive a rewrite while the node behind it is new.
        old = set(self.steps[-1].before.nodes)
        return [s for s in sites if self.program.node(s.contract) not in old]

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.rule_params.items())
        return (f"Candidate({self.rule}({params}), flops={self.flops} ({self.flops_ratio:.2f}x), "
                f"params={self.params}, hash={self.structural_hash})")

    # --- weights --------------------------------------------------------------------------------

    def init(self, original_program: OpProgram, original_weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Closed-form weights for `program` from the original operator's weights.

        Replays each step's algebra (truncated SVDs, Tucker-2, block projections; see
        `gos_tvm.space.factor`); weights a step does not touch, such as the bias, are
        carried over.  Activation-based least squares for the final pointwise map is in
        `gos_tvm.fit.refit_output_linear`, since it needs data.
        """
        if original_program.structural_hash != self.origin.structural_hash:
            raise ValueError(f"candidate {self.rule} was derived from program '{self.origin.name}' "
                             f"({self.origin.structural_hash}), not from '{original_program.name}' "
                             f"({original_program.structural_hash})")
        weights: dict[str, np.ndarray] = {}
        for name, shape in original_program.weights.items():
            if name not in original_weights:
                raise ValueError(f"original weight '{name}' {shape} is missing")
            value = np.asarray(original_weights[name], dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"original weight '{name}' must have shape {shape}, got {value.shape}")
            weights[name] = value.copy()
        for step in self.steps:
            weights = step.init(weights)
        return weights

    # --- composition ------------------------------------------------------------------------

    def apply(self, rule: str, site: str | Site | None = None, **params: Any) -> "Candidate":
        """This candidate with `rule` applied at `site` (composition).

        `site` names a contraction node; when omitted, the rule is applied at the unique
        site where it is legal, looking first at the sites the last rewrite created.
        """
        r = get_rule(rule)
        target = self._pick_site(r.name, site, params)
        program, roles = r.apply(self.program, target, **params)
        step = Step(r.name, target, dict(r.resolve(target, params)), roles, self.program, program)
        return Candidate(program, self.origin, self.steps + (step,))

    def _pick_site(self, rule: str, site: str | Site | None, params: Mapping[str, Any]) -> Site:
        if isinstance(site, Site):
            site = site.contract
        if site is not None:
            found = match_site(self.program, site)
            if found is None:
                known = [s.contract for s in find_sites(self.program)]
                raise ValueError(f"'{site}' is not a rewritable contraction of program '{self.program.name}'; "
                                 f"its sites are {known}")
            return found
        problems = []
        for pool in (self.new_sites(), find_sites(self.program)):
            legal = []
            for s in pool:
                try:
                    get_rule(rule).resolve(s, params)
                    legal.append(s)
                except ValueError as err:
                    problems.append(str(err))
            if len(legal) == 1:
                return legal[0]
            if len(legal) > 1:
                raise ValueError(f"{rule} is legal at several sites of '{self.program.name}' "
                                 f"({[s.contract for s in legal]}); pass site=")
        if not problems:
            raise ValueError(f"program '{self.program.name}' has no rewritable site")
        reasons = "\n  ".join(dict.fromkeys(problems))
        raise ValueError(f"{rule} is legal at no site of '{self.program.name}':\n  {reasons}")


def apply(program: OpProgram | Candidate, rule: str, site: str | Site | None = None, **params: Any) -> Candidate:
    """Apply one rewrite rule to a program (or, composing, to a candidate); see `Candidate.apply`."""
    base = program if isinstance(program, Candidate) else Candidate.original(program)
    return base.apply(rule, site, **params)


_ORDERS = ("flops", "bytes", "params")


@dataclass(frozen=True)
class FamilyReport:
    """What one family contributed to a `candidates` call, and why it gave nothing when it did not.

    Attributes:
        family: the rule's name.
        generated: distinct candidates whose chain of rewrites uses the rule.
        kept: how many of those are within the FLOP budget.
        cheapest_ratio: the lowest FLOP ratio (to the original) among them, None if none.
        problems: why the rule was illegal at the sites it was tried on (distinct messages).
        budget: the FLOP budget of the call (None: no budget).
    """

    family: str
    generated: int
    kept: int
    cheapest_ratio: float | None
    problems: tuple[str, ...]
    budget: float | None

    @property
    def reason(self) -> str:
        """'' when the family kept a candidate; otherwise why it did not, in one line."""
        if self.kept:
            return ""
        if self.generated:
            return (f"{self.generated} candidate(s), the cheapest at {self.cheapest_ratio:.2f}x the FLOPs, "
                    f"above the budget of {self.budget}x")
        if self.problems:
            return "not legal: " + "; ".join(self.problems)
        return "not tried: no site of the program"


class CandidateList(list):
    """The list `candidates` returns, with a `FamilyReport` per family tried (`families`)."""

    def __init__(self, items: Iterable[Candidate] = (), families: Mapping[str, FamilyReport] | None = None):
        super().__init__(items)
        self.families: dict[str, FamilyReport] = dict(families or {})

    def why_none(self) -> str:
        """Per family, why it gave no candidate (families that gave one are left out)."""
        lines = [f"{name}: {rep.reason}" for name, rep in self.families.items() if rep.reason]
        return "; ".join(lines) if lines else "every family gave a candidate"


def candidates(program: OpProgram, *, families: Iterable[str] | None = None, depth: int = 2,
               ranks: Sequence[int] | None = None, rank_fractions: Sequence[float] = (0.125, 0.25, 0.5),
               groups: Sequence[int] = (2, 4), multipliers: Sequence[int] = (1,),
               max_flops_ratio: float | None = 1.0, include_original: bool = True,
               sites: Iterable[str] | None = None, order: str | None = "flops") -> CandidateList:
    """Distinct replacement candidates for the operator `program`.

    Args:
        program: the operator (e.g. `gos_tvm.instructions.library.conv2d(...)`).
        families: rule names to use (default: all of `RULES`), at every step.
        depth: longest chain of rewrites; 2 includes compositions (a rule applied to a
            site created by another rule, e.g. low_rank on the pointwise part of a
            depthwise-separable factorisation); 1 gives single rewrites only.
        ranks, rank_fractions, groups, multipliers: parameter grids, see `SpaceOptions`.
        max_flops_ratio: keep candidates with at most this multiple of the original's
            FLOPs (None keeps all).  The original itself is always kept if included.
        include_original: include the original operator (`Candidate.is_original`).
        sites: contraction nodes of `program` to rewrite first (default: every site).
        order: sort key ('flops', 'bytes', 'params'), ascending, or None for generation
            order (the original first).

    Returns:
        Candidates with pairwise distinct structural hashes, as a `CandidateList` whose
        `families` say, per family, how many candidates it gave and, when none survived,
        why (`CandidateList.why_none`; see also `explain`).
    """
    names = list(RULES) if families is None else list(families)
    for n in names:
        get_rule(n)  # raises on an unknown family
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if order is not None and order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS} or None, got {order!r}")
    if max_flops_ratio is not None and max_flops_ratio <= 0:
        raise ValueError(f"max_flops_ratio must be positive, got {max_flops_ratio}")
    options = SpaceOptions(ranks=None if ranks is None else tuple(ranks), rank_fractions=tuple(rank_fractions),
                           groups=tuple(groups), multipliers=tuple(multipliers))
    origin = Candidate.original(program)
    first_sites = find_sites(program)
    if sites is not None:
        wanted = set(sites)
        unknown = wanted - {s.contract for s in first_sites}
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not sites of '{program.name}'; "
                             f"its sites are {[s.contract for s in first_sites]}")
        first_sites = [s for s in first_sites if s.contract in wanted]

    seen = {program.structural_hash}
    found: list[Candidate] = []
    problems: dict[str, dict[str, None]] = {n: {} for n in names}  # ordered sets of messages
    frontier = [origin]
    for level in range(depth):
        nxt = []
        for cand in frontier:
            for site in (first_sites if level == 0 else cand.new_sites()):
                for name in names:
                    rule = RULES[name]
                    if cand.steps and RULES[cand.steps[-1].rule].family_name == rule.family_name:
                        continue  # a family composed with itself stays in the family, at a higher cost
                    if cand.steps and name == "shift_pointwise":
                        # A shift of a value computed inside the same kernel: MetaSchedule produced
                        # wrong schedules for it (channel_bottleneck>shift_pointwise, 8% error in
                        # tests/test_tuned_candidates.py); shifts stay on the operator's input.
                        continue
                    grid = rule.grid(site, options)
                    if not grid and level == 0:
                        why = rule.site_problem(site)
                        if why is None:
                            tried = rule.proposals(site, options)
                            why = (f"no legal parameters among {tried} "
                                   f"({rule.problem(site, **tried[0])})" if tried else "no parameters to try")
                        problems[name][f"{site.contract}: {why}"] = None
                    for params in grid:
                        new = cand.apply(name, site, **params)
                        if new.structural_hash in seen:
                            continue
                        seen.add(new.structural_hash)
                        found.append(new)
                        nxt.append(new)
        frontier = nxt

    def within(c: Candidate) -> bool:
        return max_flops_ratio is None or c.flops <= max_flops_ratio * program.flops

    reports = {}
    for name in names:
        mine = [c for c in found if any(s.rule == name for s in c.steps)]
        reports[name] = FamilyReport(name, len(mine), sum(map(within, mine)),
                                     min((c.flops_ratio for c in mine), default=None),
                                     tuple(problems[name]), max_flops_ratio)
    found = [c for c in found if within(c)]
    result = CandidateList(([origin] if include_original else []) + found, reports)
    if order is not None:
        result.sort(key=lambda c: getattr(c, order))  # stable: ties keep generation order
    return result


def explain(program: OpProgram, **kwargs: Any) -> dict[str, str]:
    """Per family, why `candidates(program, **kwargs)` has no candidate of it ('' when it has one).

    For a site with no candidate this names every family tried and why each did not
    apply: illegal at the site (and why), or legal but above the FLOP budget (and by how much).
    """
    return {name: rep.reason for name, rep in candidates(program, **kwargs).families.items()}
