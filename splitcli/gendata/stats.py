"""Statistics of a gendata run: snippets found and missed, match similarity, offload share of
characters and of tokens per trace and overall, and where in the traces the tags fall; as JSON and
as two PNG plots (offload-share histogram, offload position profile)."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path
from typing import Any

BINS = 20  # the position profile: the reasoning cut into this many equal parts


def position_profile(records: list[dict[str, Any]], bins: int = BINS) -> list[float]:
    """For each twentieth of the traces, the share of its characters inside tags, over all traces."""
    inside, total = [0.0] * bins, [0.0] * bins
    for record in records:
        start, end = 0, record["chars"]
        length = end - start
        if length <= 0:
            continue
        for index in range(bins):
            low, high = start + length * index / bins, start + length * (index + 1) / bins
            total[index] += high - low
            for a, b in record["intervals"]:
                inside[index] += max(0.0, min(b, high) - max(a, low))
    return [round(i / t, 4) if t else 0.0 for i, t in zip(inside, total, strict=True)]


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    accepted = [r for r in records if r["status"] == "ok"]
    rejected = [r for r in records if r["status"] != "ok"]
    similarities = [s["similarity"] for r in accepted for s in r["snippets"]]
    attempts = [a for r in records for a in r.get("attempts", [])]
    char_shares = [r["offload_chars"] for r in accepted]
    token_shares = [r["offload_tokens"] for r in accepted if r.get("offload_tokens") is not None]

    def spread(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        return {"mean": round(statistics.fmean(values), 4), "median": round(statistics.median(values), 4),
                "min": round(min(values), 4), "max": round(max(values), 4)}

    return {
        "traces": len(records), "accepted": len(accepted), "rejected": len(rejected),
        "rejected_by_reason": dict(Counter(_reason_kind(r["reason"]) for r in rejected)),
        "snippets": {"found": len(similarities),
                     "missed_in_attempts": sum(a.get("snippets", 0) - a.get("found", 0) for a in attempts),
                     "similarity": spread(similarities),
                     "exact": sum(1 for s in similarities if s >= 1.0)},
        "attempts": len(attempts),
        "offload_share_chars": spread(char_shares),
        "offload_share_tokens": spread(token_shares),
        "position_profile": position_profile(accepted),
        "per_trace": [{"id": r["id"], "snippets": len(r["snippets"]), "offload_chars": r["offload_chars"],
                       "offload_tokens": r.get("offload_tokens"),
                       "similarity_min": min((s["similarity"] for s in r["snippets"]), default=None)}
                      for r in accepted],
    }


def _reason_kind(reason: str) -> str:
    """A rejection reason without its numbers, to count alike ones together."""
    return "".join("N" if char.isdigit() else char for char in reason.split("(")[0]).strip()


def plot(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """offload_share.png (histogram over traces) and offload_position.png (where the tags fall)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    accepted = [r for r in records if r["status"] == "ok"]
    written = []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.hist([100 * r["offload_chars"] for r in accepted], bins=20, range=(0, 100), color="#b03aa8")
    ax.set_xlabel("characters inside <bigmodel> tags (% of the trace)")
    ax.set_ylabel("traces")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of traces has no fractions
    ax.set_title(f"offload share, {len(accepted)} traces")
    fig.tight_layout()
    written.append(folder / "offload_share.png")
    fig.savefig(written[-1])
    plt.close(fig)
    profile = position_profile(accepted)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.bar([100 * (i + 0.5) / len(profile) for i in range(len(profile))], [100 * v for v in profile],
           width=100 / len(profile) * 0.9, color="#2a9fbc")
    ax.set_xlabel("position in the trace (%)")
    ax.set_ylabel("characters inside tags (%)")
    ax.set_title("where the hard parts are")
    fig.tight_layout()
    written.append(folder / "offload_position.png")
    fig.savefig(written[-1])
    plt.close(fig)
    return written
