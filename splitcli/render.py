"""Drawing a Trace: live while it is generated, statically afterwards, and as plain text."""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from splitcli.console import BIG_STYLE, SMALL_STYLE, TAG_STYLE
from splitcli.console import err as err_console
from splitcli.trace import Segment, Trace

STYLES = {"small": SMALL_STYLE, "big": BIG_STYLE}


def legend(trace: Trace) -> Text:
    small = trace.models.get("small", "small model")
    big = trace.models.get("big", "big model")
    return Text.assemble(
        ("■ ", SMALL_STYLE), (f"small: {small}", SMALL_STYLE), "   ",
        ("■ ", BIG_STYLE), (f"big: {big}", BIG_STYLE), "   ", ("<tags> dim", TAG_STYLE),
    )


def trace_text(trace: Trace, open_tag: str = "<bigmodel>", close_tag: str = "</bigmodel>",
               tail_chars: int | None = None) -> Text:
    """The trace coloured by model; with `tail_chars`, only about that many last characters."""
    pieces: list[tuple[str, str]] = []
    budget = tail_chars if tail_chars is not None else -1
    for segment in reversed(trace.segments):
        text_part = segment.text if budget < 0 else segment.text[-budget:]
        pieces.append((text_part, STYLES[segment.model]))
        if budget >= 0:
            budget -= len(text_part)
            if budget <= 0:
                break
    text = Text()
    for text_part, style in reversed(pieces):
        text.append(text_part, style=style)
    text.highlight_regex(f"{re.escape(open_tag)}|{re.escape(close_tag)}", TAG_STYLE)
    return text


def footer(trace: Trace) -> Text:
    stats = trace.stats()
    tokens = stats["tokens"]
    return Text.assemble(
        (f"small {tokens['small']} tok", SMALL_STYLE), " · ", (f"big {tokens['big']} tok", BIG_STYLE),
        f" · offload {stats['offload_share']:.1%} · handoffs {stats['handoffs']} · {stats['wall_seconds']:.1f}s",
        style="dim" if trace.wall_seconds is None else "",
    )


def summary_table(trace: Trace) -> Group:
    """Per-model tokens, time and speed, then the handoff figures and the answer."""
    stats = trace.stats()
    models = Table(title="summary", title_justify="left")
    for column in ("model", "tokens", "time (s)", "tokens/s"):
        models.add_column(column, justify="left" if column == "model" else "right")
    for role in ("small", "big"):
        if role in trace.models:
            rate = stats["tokens_per_second"][role]
            models.add_row(Text(f"{role}: {trace.models[role]}", STYLES[role]), str(stats["tokens"][role]),
                           f"{stats['seconds'][role]:.2f}", f"{rate:.1f}" if rate else "-")
    latency = stats["mean_handoff_latency_s"]
    facts = Table.grid(padding=(0, 2))
    facts.add_row("offload share", f"{stats['offload_share']:.1%} of generated tokens")
    mean = f", {latency * 1000:.0f} ms to first token on average" if latency else ""
    facts.add_row("handoffs", f"{stats['handoffs']}{mean}")
    facts.add_row("handoff prompt tokens not cached", str(sum(c["uncached_prompt_tokens"] for c in stats["handoff_costs"])))
    facts.add_row("wall time", f"{stats['wall_seconds']:.2f} s ({stats['http_seconds']:.2f} s in {stats['requests']} requests)")
    facts.add_row(Text("answer", "bold"), Text(stats["answer"] or "(no boxed answer)", "bold green"))
    return Group(models, facts)


def show(trace: Trace, console: Console) -> None:
    """The finished trace with legend and summary (same view as at the end of a live run)."""
    console.print(legend(trace))
    console.print(trace_text(trace))
    console.print(summary_table(trace))


def plain_summary(trace: Trace) -> str:
    stats = trace.stats()
    tokens = stats["tokens"]
    return (
        f"tokens: small {tokens['small']}, big {tokens['big']}; offload {stats['offload_share']:.1%}; "
        f"handoffs {stats['handoffs']}; wall {stats['wall_seconds']:.2f}s; answer: {stats['answer']}"
    )


def plain_text(trace: Trace) -> str:
    return "".join(_marked(segment, segment.text) for segment in trace.segments)


def _marked(segment: Segment, text: str) -> str:
    return f"[big]{text}[/big]" if segment.model == "big" else text


class PlainStream:
    """Plain text as it is generated: small text at once, big text once its segment is final
    (a probe may still cut it), `[big]...[/big]` around big text."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.current: Segment | None = None
        self.printed = 0

    def __call__(self, event: str, segment: Segment) -> None:
        if event == "open" and segment is not self.current:
            self.flush()
            self.current, self.printed = segment, 0
        elif event == "update" and segment.model == "small" and segment is self.current:
            self._write(segment.text[self.printed:])
            self.printed = len(segment.text)

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def flush(self) -> None:
        segment = self.current
        if segment is None:
            return
        rest = segment.text[self.printed:]
        self._write(_marked(segment, rest) if segment.model == "big" else rest)
        self.printed = len(segment.text)


class LiveView:
    """A rich Live view: the tail of the trace that fits the screen, and a footer with running stats."""

    def __init__(self, console: Console) -> None:
        self.trace: Trace | None = None
        self.console = console
        self.live = Live(get_renderable=self._renderable, console=console, refresh_per_second=8, transient=True)

    def attach(self, trace: Trace) -> None:
        self.trace = trace

    def _renderable(self) -> Group | Text:
        if self.trace is None:
            return Text("preparing prompts", style="dim")
        # Only the tail is wrapped at each refresh: a 16k-token trace must not slow the run down.
        body = trace_text(self.trace, tail_chars=self.console.width * self.console.height * 2)
        lines = body.wrap(self.console, self.console.width)
        room = max(3, self.console.height - 3)
        tail = Text("\n").join(lines[-room:]) if len(lines) > room else body
        return Group(legend(self.trace), tail, footer(self.trace))

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)


# ---------------------------------------------------------------- eval


class EvalProgress:
    """Progress of an eval: a rich bar on a terminal (done/total, running pass@1, mean offload,
    samples/s, ETA); plain lines every few seconds otherwise. Both on stderr."""

    def __init__(self, total: int, done: int, graded: list[dict[str, Any]], every: float = 10.0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.total, self.done = total, done
        self.correct = sum(1 for r in graded if r.get("correct"))
        self.graded = len(graded)
        self.offload = sum(r["trace"]["stats"]["offload_share"] for r in graded)
        self.errored = 0
        self.started = time.monotonic()
        self.fresh = 0
        self.every, self.last_line = every, 0.0
        self.live = err_console.is_terminal
        self.bar = Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            TimeRemainingColumn(), console=err_console, transient=False) if self.live else None
        self.task_id = self.bar.add_task(self._status(), total=total, completed=done) if self.bar else None

    def _status(self) -> str:
        rate = self.fresh / max(time.monotonic() - self.started, 1e-9)
        pass1 = f"{self.correct / self.graded:.1%}" if self.graded else "-"
        offload = f"{self.offload / self.graded:.1%}" if self.graded else "-"
        errors = f" · {self.errored} errored" if self.errored else ""
        return f"pass@1 {pass1} · offload {offload} · {rate:.2f} samples/s{errors}"

    def advance(self, record: dict[str, Any]) -> None:
        self.done += 1
        self.fresh += 1
        if record.get("error") is not None:
            self.errored += 1
        else:
            self.graded += 1
            self.correct += bool(record.get("correct"))
            self.offload += record["trace"]["stats"]["offload_share"]
        if self.bar is not None and self.task_id is not None:
            self.bar.update(self.task_id, completed=self.done, description=self._status())
        elif time.monotonic() - self.last_line >= self.every or self.done == self.total:
            self.last_line = time.monotonic()
            err_console.print(f"eval {self.done}/{self.total} · {self._status()}", highlight=False, markup=False)

    def __enter__(self) -> EvalProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def eval_summary(summary: dict[str, Any], console: Console) -> None:
    """results.json as tables: accuracy (pass@1 with its interval, pass@k, maj@k, cov@k) and usage."""
    accuracy, usage = summary.get("accuracy"), summary.get("usage") or {}
    head = Table(title=f"{summary['task']} · {summary['mode']} · {summary['problems']} problems x n={summary['n']}",
                 title_justify="left")
    head.add_column("metric")
    head.add_column("value", justify="right")
    if accuracy is None:
        head.add_row("pass@1", Text("not computed: samples are missing or errored", "red"))
    else:
        low, high = accuracy["pass@1_ci95"]
        head.add_row("pass@1", f"{_pct(accuracy['pass@1'])}  (95% CI {_pct(low)} - {_pct(high)})")
        for name in ("pass@k", "maj@k", "cov@k"):
            head.add_row(name, "  ".join(f"k={k}: {_pct(v)}" for k, v in accuracy[name].items()))
    if usage:
        head.add_row("offload share", f"mean {_pct(usage['offload_share_mean'])}, median {_pct(usage['offload_share_median'])}")
        head.add_row("handoffs per sample", f"{usage['handoffs_mean']:.2f}")
        head.add_row("seconds per sample", f"mean {usage['seconds_mean']:.2f}, median {usage['seconds_median']:.2f}, "
                                           f"p90 {usage['seconds_p90']:.2f}")
        speeds = ", ".join(f"{m} {v}" for m, v in usage["tokens_per_second"].items() if v is not None) or "-"
        head.add_row("tokens/s", speeds)
    head.add_row("samples", f"{summary['samples']} ({summary['errored']} errored) in {summary['wall_seconds']:.1f} s")
    console.print(head)


def compare_table(rows: list[dict[str, Any]], console: Console) -> None:
    from rich import box

    show_run = any(row["name"] != row["mode"] for row in rows)
    table = Table(title="* on the Pareto front: no other run is both faster and more accurate", title_justify="left",
                  box=box.SIMPLE_HEAD)
    columns = ["mode", "pass@1", "95% CI", "offload", "s/sample", "p90 s", "", *(["run"] if show_run else [])]
    for column in columns:
        table.add_column(column, no_wrap=column != "run", justify="left" if column in ("run", "mode") else "right")
    for row in rows:
        interval = row["pass@1_ci95"]
        low_high = f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "-"
        seconds = "-" if row["seconds_mean"] is None else f"{row['seconds_mean']:.2f}"
        p90 = "-" if row["seconds_p90"] is None else f"{row['seconds_p90']:.2f}"
        cells = [Text(row["mode"]), _pct(row["pass@1"]), low_high, _pct(row["offload_share"]), seconds, p90,
                 "*" if row["pareto"] else ""]
        table.add_row(*cells, *([Text(row["name"])] if show_run else []))
    console.print(table)
