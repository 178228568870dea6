"""Drawing a Trace: live while it is generated, statically afterwards, and as plain text."""

from __future__ import annotations

import re
import sys
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from splitcli.console import BIG_STYLE, SMALL_STYLE, TAG_STYLE
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
