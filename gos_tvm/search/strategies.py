"""Search strategies: how the GOS loop chooses a replacement per site.

A strategy gets the running `GOSearch` (its sites, the measured site latencies, `score`,
`fit_candidate`, `candidate_latencies`, the latency model, the persistent `state`) and the per-site
choices so far, and returns its choices.  `GOSearch` runs its strategies in order, each starting
from the previous one's choices; every configuration a strategy scores becomes a point of the
Pareto front.  Strategies keep their progress in `search.state` (saved with `search.save()`), so a
killed run resumes where it stopped.

    GreedyLeastEfficientFirst   site by site, the largest measured latency first; bisection of the
                                (latency rank, screening fit error) Pareto front for the cheapest
                                accurate candidate
    Evolution                   mutation and crossover of the per-site choices
"""
from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from tqdm.auto import tqdm

from ..instructions.program import jsonable
from .pareto import config_key

if TYPE_CHECKING:  # pragma: no cover
    from .gos import GOSearch

Choices = dict[str, "str | None"]


class SearchStrategy(ABC):
    """One way of choosing per-site replacements (see the module docstring)."""

    name: str = "strategy"

    @abstractmethod
    def run(self, search: "GOSearch", choices: Mapping[str, str | None]) -> Choices:
        """Improve `choices` (site -> candidate key or None) and return the result."""


def bisect_cheapest(n: int, accept: Callable[[int], bool], max_tries: int) -> None:
    """Bisect positions 0..n-1 of a ranking (cheapest first) for the cheapest accepted one.

    The positions are assumed to grow in capability with cost (`screened_front` makes them so, as
    far as a short fit can tell): the most capable (last) position is tried first, and while it is
    rejected the next most capable ones, up to half the tries.  Below the first accepted position
    the cheaper part is bisected, at most `max_tries` calls of `accept` in all.  `accept` records
    what it accepts; nothing is returned."""
    hi, tries = n - 1, 0
    while True:
        if hi < 0 or tries >= max(1, max_tries // 2):
            return
        tries += 1
        if accept(hi):
            break
        hi -= 1
    lo = 0
    while lo < hi and tries < max_tries:
        mid = (lo + hi) // 2
        tries += 1
        if accept(mid):
            hi = mid
        else:
            lo = mid + 1


def screened_front(ranking: Sequence[int], errors: Mapping[int, float]) -> list[int]:
    """The screened candidates that fit better than every cheaper screened one, cheapest first: the
    Pareto front of (position in the latency ranking, screening error).  Along it the error falls as
    the cost grows, which is `bisect_cheapest`'s premise; along the ranking alone it need not (the
    slowest-ranked candidates are often subsampling ones that fit worst)."""
    front, best = [], math.inf
    for idx in ranking:
        if idx in errors and errors[idx] < best:
            front.append(idx)
            best = errors[idx]
    return front


def spread(n: int, k: int) -> list[int]:
    """At most `k` of the positions 0..n-1, evenly spaced, both ends included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


class GreedyLeastEfficientFirst(SearchStrategy):
    """Site by site, the largest share of the tuned model first: generate the site's candidates,
    rank them with the latency model, screen a spread of the ranking with short fits, bisect the
    screened Pareto front for the cheapest candidate whose fitted weights keep the score within the
    budget (in the *current* adapted model), tune and measure the accurate ones as the model runs
    them, and keep the fastest if it beats the site there."""

    name = "greedy"

    def run(self, search: "GOSearch", choices: Mapping[str, str | None]) -> Choices:
        opt = search.opt
        choices = {**choices, **search.state.get(round_key(search, "greedy_choices"), {})}
        site_lat = search.site_latency
        order = sorted(search.sites, key=lambda s: -site_lat[s] if math.isfinite(site_lat[s]) else 0)
        if opt.max_sites is not None:
            order = order[: opt.max_sites]
        order = [s for s in order if choices.get(s) is None]  # a later round: the sites still kept
        done = set(search.state.get(round_key(search, "greedy_done"), []))
        for site_id in tqdm(order, desc="sites", leave=False):
            if site_id not in done:
                self._site(search, site_id, choices)
                done.add(site_id)
                search.state[round_key(search, "greedy_done")] = sorted(done)
                search.state[round_key(search, "greedy_choices")] = choices
                search.save()
        return choices

    @staticmethod
    def _screen(search: "GOSearch", site_id: str, cands, picked: list[int], choices: Choices) -> dict[int, float]:
        """Screening errors of the candidates `picked` (indices into `cands`), computed once per site
        and configuration (kept in the search state, so a resumed run does not fit them again)."""
        cache = search.state.setdefault("screens", {}).setdefault(f"{site_id}@{config_key(choices)}", {})
        todo = [i for i in picked if cands[i].structural_hash not in cache]
        if todo:
            errors = search.screen_candidates(site_id, [cands[i] for i in todo], choices)
            cache.update({cands[i].structural_hash: e for i, e in zip(todo, errors)})
            search.save()
        return {i: cache[cands[i].structural_hash] for i in picked}

    def _site(self, search: "GOSearch", site_id: str, choices: Choices) -> None:
        from ..space import candidates as space_candidates

        opt, floor = search.opt, search.floor
        decision = search.state["decisions"][site_id]
        cands = space_candidates(search.sites[site_id].program, depth=opt.depth,
                                 max_flops_ratio=opt.max_flops_ratio, include_original=False)
        if not cands:
            decision["reason"] = f"no candidate within the FLOP budget; per family: {cands.why_none()}"
            return
        ranking, how = search.latency_model.rank([c.program for c in cands])
        decision["ranking"] = how
        order, screen = ranking, {}
        if opt.screen_per_site > 0:
            screen = self._screen(search, site_id, cands, [ranking[p] for p in spread(len(ranking), opt.screen_per_site)],
                                  choices)
            order = screened_front(ranking, screen)
            decision["screened"] = {"candidates": len(screen), "front": len(order), "fit_steps": opt.screen_fit_steps}
        rank_of = {idx: pos for pos, idx in enumerate(ranking)}
        accurate = []  # (position in `order`, candidate, key, configuration)

        def attempt(pos: int) -> bool:
            cand = cands[order[pos]]
            ckey = f"{site_id}:{cand.structural_hash}"
            search.state["candidates"].setdefault(ckey, {
                "site": site_id, "hash": cand.structural_hash, "rule": cand.rule,
                "params": jsonable(cand.rule_params), "flops": cand.flops, "program": cand.program.to_json()})
            info = search.state["candidates"][ckey]
            if "fit" not in info:
                info["fit"] = search.fit_candidate(site_id, cand, choices)
                search.save()
            # The layer-wise fit is the cheap proxy; only a candidate it rejects is distilled, with
            # the sites already replaced, against the original model.
            variant = {**choices, site_id: ckey}
            layerwise = acc = search.score(variant)
            judged = "layer-wise fit"
            if acc < floor and search.distiller.enabled and opt.distill_steps > 0:
                variant = search.distiller.configuration(variant, opt.distill_steps)
                if variant[site_id] != ckey:
                    acc, judged = search.score(variant), f"distillation ({opt.distill_steps} steps)"
            ok = acc >= floor
            tried = {"candidate": ckey, "rule": cand.rule, "params": info["params"], "flops": cand.flops,
                     "rank": rank_of[order[pos]], "screen_rel_error": screen.get(order[pos]),
                     "fit_rel_error": info["fit"]["rel_error"], "score": acc,
                     "layerwise_score": layerwise, "judged_by": judged,
                     "verdict": "accurate" if ok else f"rejected: score {acc:.4f} below {floor:.4f}"}
            decision["tried"] = [t for t in decision["tried"] if t["candidate"] != ckey] + [tried]
            if ok:
                accurate.append((pos, cand, ckey, variant))
            return ok

        bisect_cheapest(len(order), attempt, opt.tries_per_site)
        accurate = [(c, k, v) for _, c, k, v in sorted(accurate, key=lambda a: a[0])[: opt.measure_per_site]]
        if not accurate:
            decision["reason"] = (f"kept: none of the {len(decision['tried'])} candidates tried kept the "
                                  f"score within the budget")
            return
        rows = search.candidate_latencies([ck for _, ck, _ in accurate])
        best, best_key, best_variant = min(accurate, key=lambda cc: rows[cc[1]]["latency_s"])
        for t in decision["tried"]:
            if t["candidate"] in rows:
                t["latency_s"] = rows[t["candidate"]]["latency_s"]
        row = rows[best_key]
        in_model = (f"{row['removed_s'] * 1e6:.1f} -> {row['latency_s'] * 1e6:.1f} us in the model: "
                    f"{' + '.join(row['replaced_tasks']) or 'nothing'} -> {' + '.join(row['tasks']) or 'nothing'}")
        if row["saved_s"] > 0:
            # The accepted configuration, with distilled weights where it was distilled (the keys of
            # the sites replaced before change with it).
            choices.update(best_variant)
            decision.update(choice=best_variant[site_id], rule=best.rule,
                            reason=f"{best.rule}: {row['removed_s'] / max(row['latency_s'], 1e-12):.2f}x faster ({in_model}), "
                                   f"score {search.score({**choices}):.4f}")
            self._recover(search, site_id, choices, decision)
        else:
            decision["reason"] = (f"kept: the fastest accurate candidate ({best.rule}) is not faster than the "
                                  f"original ({in_model})")

    @staticmethod
    def _recover(search: "GOSearch", site_id: str, choices: Choices, decision: dict) -> None:
        """Distil the configuration just accepted (`recover_steps`, on the final distillation's inputs)
        and go on from the distilled one when it scores no worse: the next site is then judged in a
        model whose accuracy the distillation has won back, instead of one carrying every earlier
        site's loss until the final distillation."""
        steps = search.opt.recover_steps
        if steps <= 0 or not search.distiller.enabled:
            return
        before = search.score(choices)
        recovered = search.distiller.configuration(choices, steps, search.final_distill_inputs)
        after = search.score(recovered)
        decision["recovered"] = {"steps": steps, "score_before": before, "score_after": after,
                                 "kept": after >= before, "configuration": recovered}
        if after >= before:
            choices.update(recovered)
            decision["choice"] = recovered[site_id]


class Evolution(SearchStrategy):
    """A small evolutionary search over the per-site choices, seeded with the choices so far (a
    replacement at one site changes what is best at the next).  Genes are the candidates whose
    kernels were measured; fitness is (outside the budget, estimated latency, -score)."""

    name = "evolution"

    def run(self, search: "GOSearch", choices: Mapping[str, str | None]) -> Choices:
        opt = search.opt
        options: dict[str, list[str | None]] = {s: [None] for s in search.sites}
        for ckey, info in search.state["candidates"].items():
            if search.candidate_measurement(ckey) is not None:
                options[info["site"]].append(ckey)
        free = [s for s, o in options.items() if len(o) > 1]
        if not free:
            return dict(choices)
        rng = random.Random(opt.seed)
        population = [dict(choices)]
        generations = round_key(search, "generations")
        for gen in tqdm(range(opt.generations), desc="evolution", leave=False):
            if str(gen) in search.state.get(generations, {}):
                population = [dict(c) for c in search.state[generations][str(gen)]]
                continue
            children = []
            for _ in range(opt.population):
                a, b = rng.choice(population), rng.choice(population)
                child = {s: (a if rng.random() < 0.5 else b).get(s) for s in search.sites}  # crossover
                s = rng.choice(free)
                child[s] = rng.choice(options[s])                                          # mutation
                children.append({k: v for k, v in child.items() if v is not None})
            for child in children:
                search.score(child)
            ranked = sorted({config_key(c): c for c in population + children}.values(),
                            key=lambda c: self.fitness(search, c))
            population = ranked[: max(2, opt.population // 2)]
            search.state.setdefault(generations, {})[str(gen)] = population
            search.save()
        return dict(population[0]) if population else dict(choices)

    @staticmethod
    def fitness(search: "GOSearch", choices: Mapping[str, str | None]) -> tuple:
        acc = search.score(choices)
        return (acc < search.floor, search.estimate(choices), -acc)


def round_key(search: "GOSearch", name: str) -> str:
    """Where a strategy keeps its progress in `search.state` during the search's current round (the
    first round's keys are the names themselves, as before rounds)."""
    return name if search.round == 0 else f"{name}@round{search.round}"


def default_strategies() -> list[SearchStrategy]:
    """Today's search: greedy least-efficient-first, then evolution."""
    return [GreedyLeastEfficientFirst(), Evolution()]


__all__ = ["SearchStrategy", "GreedyLeastEfficientFirst", "Evolution", "bisect_cheapest", "round_key",
           "default_strategies"]
