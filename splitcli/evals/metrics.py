"""Metrics over graded samples: pass@1 with a bootstrap interval, unbiased pass@k, maj@k, cov@k,
offload and latency. Each is a plain function of the sample records, so it can be checked by hand."""

from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict
from math import comb
from typing import Any

from splitcli.errors import DataError

BOOTSTRAP_ROUNDS = 2000
BOOTSTRAP_SEED = 0


def by_problem(samples: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Graded samples per problem id, in sample order (errored samples are not graded)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: (str(s["problem_id"]), s["sample"])):
        if sample.get("error") is None:
            grouped[str(sample["problem_id"])].append(sample)
    return dict(grouped)


def check_complete(grouped: dict[str, list[dict[str, Any]]], problem_ids: list[str], n: int) -> None:
    """pass@1 over fewer samples than asked for silently shrinks (lighteval's bug): refuse it."""
    short = [pid for pid in problem_ids if len(grouped.get(pid, [])) < n]
    if short:
        shown = ", ".join(short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        raise DataError(f"pass@1 needs {n} graded samples of every problem; {len(short)} have fewer ({shown}): "
                        "finish the run with --resume DIR")


def pass_at_k(n: int, correct: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples with `correct` right (Chen et al., 2021)."""
    if n - correct < k:
        return 1.0
    return 1.0 - comb(n - correct, k) / comb(n, k)


def bootstrap_interval(values: list[float], rounds: int = BOOTSTRAP_ROUNDS, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """95% interval of the mean of per-problem values, resampling problems with replacement."""
    if not values:
        return (0.0, 0.0)
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(rounds))
    return means[int(0.025 * rounds)], means[min(rounds - 1, int(0.975 * rounds))]


def majority_correct(samples: list[dict[str, Any]]) -> bool:
    """Whether the most frequent extracted answer is right (ties: the one that came first); samples
    with no extracted answer do not vote."""
    votes = [s for s in samples if s.get("extracted") not in (None, "")]
    if not votes:
        return False
    counts = Counter(s["vote"] if s.get("vote") is not None else s["extracted"] for s in votes)
    best = max(counts.values())
    for sample in votes:  # first sample whose answer has the top count
        key = sample["vote"] if sample.get("vote") is not None else sample["extracted"]
        if counts[key] == best:
            return bool(sample["correct"])
    return False


def ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n (n itself included)."""
    values, k = [], 1
    while k < n:
        values.append(k)
        k *= 2
    return [*values, n]


def accuracy(grouped: dict[str, list[dict[str, Any]]], problem_ids: list[str], n: int) -> dict[str, Any]:
    check_complete(grouped, problem_ids, n)
    per_problem = [[bool(s["correct"]) for s in grouped[pid][:n]] for pid in problem_ids]
    means = [statistics.fmean(flags) for flags in per_problem]
    low, high = bootstrap_interval(means)
    result: dict[str, Any] = {
        "pass@1": statistics.fmean(means),
        "pass@1_ci95": [low, high],
        "pass@k": {str(k): statistics.fmean(pass_at_k(n, sum(flags), k) for flags in per_problem) for k in ks(n)},
        "maj@k": {str(k): statistics.fmean(majority_correct(grouped[pid][:k]) for pid in problem_ids) for k in ks(n)},
        "cov@k": {str(k): statistics.fmean(any(flags[:k]) for flags in per_problem) for k in ks(n)},
    }
    return result


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = int(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def usage(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Offload, handoffs and latency over the graded samples."""
    graded = [s for s in samples if s.get("error") is None]
    if not graded:
        return {}
    stats = [s["trace"]["stats"] for s in graded]
    shares = [entry["offload_share"] for entry in stats]
    seconds = [s["seconds"] for s in graded]
    tokens: dict[str, int] = defaultdict(int)
    generate_seconds: dict[str, float] = defaultdict(float)
    probe_calls: dict[str, int] = defaultdict(int)
    for entry in stats:
        for path, count in (entry.get("probe_calls") or {}).items():  # older traces: none counted
            probe_calls[path] += count
        for model, count in entry["spent_tokens"].items():
            tokens[model] += count
        for model, busy in entry["generate_seconds"].items():
            generate_seconds[model] += busy
    return {
        "offload_share_mean": statistics.fmean(shares),
        "offload_share_median": statistics.median(shares),
        "handoffs_mean": statistics.fmean(entry["handoffs"] for entry in stats),
        "seconds_mean": statistics.fmean(seconds),
        "seconds_median": statistics.median(seconds),
        "seconds_p90": _quantile(seconds, 0.9),
        "tokens": dict(tokens),
        # How the probes went: through the route, or the slower way round (every prefix resent).
        "probe_calls": dict(probe_calls),
        "tokens_per_second": {m: round(tokens[m] / generate_seconds[m], 1) if generate_seconds[m] else None
                              for m in sorted(tokens)},
    }
