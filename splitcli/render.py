"""Drawing a Trace: live while it is generated, statically afterwards, and as plain text."""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from splitcli.console import BIG_STYLE, SMALL_STYLE, TAG_STYLE
from splitcli.console import err as err_console
from splitcli.trace import Model, Segment, SegmentFeed, Trace

STYLES = {"small": SMALL_STYLE, "big": BIG_STYLE}


DROPPED_STYLE = "dim strike"


def _style(segment: Segment) -> str:
    """A model's colour; text that is not part of the answer (a losing candidate, a replaced round)
    dimmed and struck through."""
    return STYLES[segment.model] if segment.kept else f"{STYLES[segment.model]} {DROPPED_STYLE}"


def legend(trace: Trace) -> Text:
    small = trace.models.get("small", "small model")
    big = trace.models.get("big", "big model")
    parts: list[str | tuple[str, str]] = [
        ("■ ", SMALL_STYLE), (f"small: {small}", SMALL_STYLE), "   ",
        ("■ ", BIG_STYLE), (f"big: {big}", BIG_STYLE), "   ", ("<tags> dim", TAG_STYLE),
    ]
    if any(not segment.kept for segment in trace.segments):
        parts += ["   ", ("not kept", DROPPED_STYLE)]
    return Text.assemble(*parts)


def trace_text(trace: Trace, open_tag: str = "<bigmodel>", close_tag: str = "</bigmodel>",
               tail_chars: int | None = None) -> Text:
    """The trace coloured by model; with `tail_chars`, only about that many last characters."""
    pieces: list[tuple[str, str]] = []
    budget = tail_chars if tail_chars is not None else -1
    for segment in reversed(trace.segments):
        text_part = segment.text if budget < 0 else segment.text[-budget:]
        pieces.append((text_part, _style(segment)))
        if budget >= 0:
            budget -= len(text_part)
            if budget <= 0:
                break
    text = Text()
    for text_part, style in reversed(pieces):
        text.append(text_part, style=style)
    text.highlight_regex(f"{re.escape(open_tag)}|{re.escape(close_tag)}", TAG_STYLE)
    return text


def _dropped_note(stats: dict[str, Any]) -> str:
    dropped = sum(stats["dropped_tokens"].values())
    return f" (+{dropped} generated, not kept)" if dropped else ""


def footer(trace: Trace) -> Text:
    stats = trace.stats()
    tokens = stats["tokens"]
    return Text.assemble(
        (f"small {tokens['small']} tok", SMALL_STYLE), " · ", (f"big {tokens['big']} tok", BIG_STYLE),
        f"{_dropped_note(stats)} · offload {stats['offload_share']:.1%} · handoffs {stats['handoffs']}"
        f" · {stats['wall_seconds']:.1f}s",
        style="dim" if trace.wall_seconds is None else "",
    )


def summary_table(trace: Trace) -> Group:
    """Per-model tokens, time and speed, then the handoff figures and the answer."""
    stats = trace.stats()
    models = Table(title="summary", title_justify="left")
    dropped = any(stats["dropped_tokens"].values())
    columns = ("model", "tokens kept", *(("generated",) if dropped else ()), "time (s)", "tokens/s")
    for column in columns:
        models.add_column(column, justify="left" if column == "model" else "right")
    for role in ("small", "big"):
        if role in trace.models:
            rate = stats["tokens_per_second"][role]
            generated = (str(stats["spent_tokens"][role]),) if dropped else ()
            models.add_row(Text(f"{role}: {trace.models[role]}", STYLES[role]), str(stats["tokens"][role]), *generated,
                           f"{stats['seconds'][role]:.2f}", f"{rate:.1f}" if rate else "-")
    latency = stats["mean_handoff_latency_s"]
    facts = Table.grid(padding=(0, 2))
    facts.add_row("offload share", f"{stats['offload_share']:.1%} of generated tokens")
    mean = f", {latency * 1000:.0f} ms to first token on average" if latency else ""
    facts.add_row("handoffs", f"{stats['handoffs']}{mean}")
    facts.add_row("handoff prompt tokens not cached", str(sum(c["uncached_prompt_tokens"] for c in stats["handoff_costs"])))
    facts.add_row("wall time", f"{stats['wall_seconds']:.2f} s ({stats['http_seconds']:.2f} s in {stats['requests']} requests)")
    speculative = trace.extra.get("speculative")
    if speculative and speculative.get("acceptance_rate") is not None:
        facts.add_row("speculative decoding", f"{speculative['acceptance_rate']:.1%} of drafted tokens accepted, "
                                              f"{speculative['mean_accepted_length']:.2f} tokens per step")
    facts.add_row(Text("answer", "bold"), Text(stats["answer"] or "(no boxed answer)", "bold green"))
    if stats["ended_by"] == "budget":
        facts.add_row(Text("ended by", "bold"), Text(budget_note(trace), "yellow"))
    return Group(models, facts)


def show(trace: Trace, console: Console) -> None:
    """The finished trace with legend and summary (same view as at the end of a live run)."""
    console.print(legend(trace))
    console.print(trace_text(trace))
    console.print(summary_table(trace))


def save_svg(traces: list[Trace], path: Any, width: int = 100) -> None:
    """The coloured view of saved traces as an SVG picture (for documentation and bug reports)."""
    recorder = Console(record=True, width=width, force_terminal=True, color_system="truecolor", file=io.StringIO())
    for trace in traces:
        recorder.print(Text(f"{trace.mode} · {trace.profile} · {trace.question}", style="dim"))
        show(trace, recorder)
    recorder.save_svg(str(path), title="splitreason")


def plain_summary(trace: Trace) -> str:
    stats = trace.stats()
    tokens = stats["tokens"]
    return (
        f"tokens: small {tokens['small']}, big {tokens['big']}{_dropped_note(stats)}; offload {stats['offload_share']:.1%}; "
        f"handoffs {stats['handoffs']}; wall {stats['wall_seconds']:.2f}s; answer: {stats['answer']}"
    ) + (f"\n{budget_note(trace)}" if stats["ended_by"] == "budget" else "")


def budget_note(trace: Trace) -> str:
    """What to say when the token budget, not the model, ended a run."""
    budget = trace.sampling.get("max_tokens")
    return (f"the token budget ({budget} tokens, prompt included) ended it before the model finished; raise it with "
            f"--set sampling.max_tokens=N")


def plain_text(trace: Trace) -> str:
    """The answer's text (what was kept), `[big]...[/big]` around the big model's part."""
    return "".join(_marked(segment, segment.text) for segment in trace.kept_segments)


def _marked(segment: Segment, text: str) -> str:
    return f"[big]{text}[/big]" if segment.model == "big" else text


class PlainStream(SegmentFeed):
    """Plain text on stdout as it is generated (see SegmentFeed), `[big]...[/big]` around big text."""

    def __init__(self, out: Any = None, defer: bool = False, provisional: tuple[Model, ...] = ("big",)) -> None:
        self.out = out or sys.stdout
        self.in_big = False
        super().__init__(self._write, defer, provisional)

    def _write(self, model: str, text: str) -> None:
        if (model == "big") != self.in_big:
            self.out.write("[big]" if model == "big" else "[/big]")
            self.in_big = model == "big"
        self.out.write(text)
        self.out.flush()

    def __call__(self, event: str, segment: Segment) -> None:
        super().__call__(event, segment)
        if event == "open" and self.in_big and segment.model != "big":
            self._write("small", "")  # the big segment before it is complete: close its marker

    def finish(self, trace: Trace) -> None:
        super().finish(trace)
        if self.in_big:
            self._write("small", "")


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


class WorkProgress:
    """Progress of long work (eval samples, gendata traces): a rich bar on a terminal (done/total,
    `status()` and the rate, ETA); plain lines every `every` seconds otherwise. Both on stderr."""

    def __init__(self, label: str, total: int, done: int, status: Callable[[], str], every: float = 10.0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.label, self.total, self.done, self.status = label, total, done, status
        self.started, self.fresh = time.monotonic(), 0
        self.every, self.last_line = every, 0.0
        self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                            TimeRemainingColumn(), console=err_console) if err_console.is_terminal else None
        self.task_id = self.bar.add_task(self._describe(), total=total, completed=done) if self.bar else None

    def _describe(self) -> str:
        rate = self.fresh / max(time.monotonic() - self.started, 1e-9)
        return f"{self.status()} · {rate:.2f}/s"

    def advance(self) -> None:
        self.done += 1
        self.fresh += 1
        if self.bar is not None and self.task_id is not None:
            self.bar.update(self.task_id, completed=self.done, description=self._describe())
        elif time.monotonic() - self.last_line >= self.every or self.done == self.total:
            self.last_line = time.monotonic()
            err_console.print(f"{self.label} {self.done}/{self.total} · {self._describe()}", highlight=False, markup=False)

    def __enter__(self) -> WorkProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


class EvalProgress(WorkProgress):
    """An eval's progress: running pass@1 and mean offload of the samples graded so far, and this
    run's throughput (tokens per second of each model, all samples in flight together)."""

    def __init__(self, total: int, done: int, graded: list[dict[str, Any]]) -> None:
        self.correct = sum(1 for r in graded if r.get("correct"))
        self.graded = len(graded)
        self.offload = sum(r["trace"]["stats"]["offload_share"] for r in graded)
        self.errored = 0
        self.tokens = {"small": 0, "big": 0}  # spent by the samples finished in this run
        super().__init__("eval", total, done, self._status)

    def _status(self) -> str:
        pass1 = f"{self.correct / self.graded:.1%}" if self.graded else "-"
        offload = f"{self.offload / self.graded:.1%}" if self.graded else "-"
        errors = f" · {self.errored} errored" if self.errored else ""
        speeds = self.throughput()["tokens_per_second"]
        rates = " ".join(f"{model} {rate:.0f}" for model, rate in speeds.items() if self.tokens[model])
        return f"pass@1 {pass1} · offload {offload}{errors} · tok/s {rates or '-'} · samples"

    def throughput(self) -> dict[str, Any]:
        """This run's samples and tokens per second of wall time."""
        seconds = max(time.monotonic() - self.started, 1e-9)
        return {"samples_per_second": round(self.fresh / seconds, 4),
                "tokens_per_second": {model: round(count / seconds, 1) for model, count in self.tokens.items()}}

    def record(self, sample: dict[str, Any]) -> None:
        if sample.get("error") is not None:
            self.errored += 1
        else:
            self.graded += 1
            self.correct += bool(sample.get("correct"))
            self.offload += sample["trace"]["stats"]["offload_share"]
            for model, count in sample["trace"]["stats"]["spent_tokens"].items():
                self.tokens[model] = self.tokens.get(model, 0) + count
        self.advance()


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
        probes = usage.get("probe_calls") or {}
        if any(probes.values()):
            slow = probes.get("openai", 0)
            cells = f"route {probes.get('route', 0)}, OpenAI API {slow}, route failed {probes.get('route_failed', 0)}"
            head.add_row("probe calls", Text(cells, "yellow" if slow else ""))
    rate = summary.get("throughput")
    if rate:
        speeds = ", ".join(f"{model} {value:.1f}" for model, value in rate["tokens_per_second"].items())
        head.add_row("throughput (this run)", f"{rate['samples_per_second']:.3f} samples/s; tokens/s {speeds}")
    head.add_row("samples", f"{summary['samples']} ({summary['errored']} errored) in {summary['wall_seconds']:.1f} s")
    console.print(head)


def compare_table(rows: list[dict[str, Any]], console: Console) -> None:
    from rich import box

    show_run = any(row["name"] != row["mode"] for row in rows)
    # Run folder names are long: in the table when the terminal has room, else numbered under it
    # (a cut or folded name cannot be pasted back into a command).
    numbered = show_run and console.width < 72 + max(len(row["name"]) for row in rows)
    table = Table(caption="* on the Pareto front: no other run is both faster and more accurate",
                  caption_justify="left", box=box.SIMPLE_HEAD)
    columns = ["mode", "pass@1", "95% CI", "offload", "s/sample", "p90 s", "", *(["run"] if show_run else [])]
    for column in columns:
        table.add_column(column, no_wrap=True, justify="left" if column in ("run", "mode") else "right")
    for number, row in enumerate(rows, start=1):
        interval = row["pass@1_ci95"]
        low_high = f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "-"
        seconds = "-" if row["seconds_mean"] is None else f"{row['seconds_mean']:.2f}"
        p90 = "-" if row["seconds_p90"] is None else f"{row['seconds_p90']:.2f}"
        cells = [Text(row["mode"]), _pct(row["pass@1"]), low_high, _pct(row["offload_share"]), seconds, p90,
                 "*" if row["pareto"] else ""]
        table.add_row(*cells, *([Text(f"#{number}" if numbered else row["name"])] if show_run else []))
    console.print(table)
    if numbered:
        for number, row in enumerate(rows, start=1):
            console.print(Text(f"#{number} {row['name']}"), soft_wrap=True)


def gendata_summary(summary: dict[str, Any], console: Console) -> None:
    """stats.json as a table: traces kept and rejected, snippets, offload shares, where the tags fall."""
    table = Table(title=f"gendata · {summary['accepted']} of {summary['traces']} traces kept", title_justify="left")
    table.add_column("")
    table.add_column("value")
    for reason, count in summary["rejected_by_reason"].items():
        table.add_row(Text("rejected", "red"), Text(f"{count} × {reason}"))
    snippets = summary["snippets"]
    similarity = snippets["similarity"]
    table.add_row("snippets found", f"{snippets['found']} ({snippets['exact']} verbatim)"
                  + (f", similarity min {similarity['min']:.2f} mean {similarity['mean']:.2f}" if similarity else ""))
    table.add_row("snippets missed", f"{snippets['missed_in_attempts']} (in {summary['attempts']} requests)")
    for name, key in (("offload share (chars)", "offload_share_chars"), ("offload share (tokens)", "offload_share_tokens")):
        spread = summary[key]
        table.add_row(name, "-" if spread is None else
                      f"mean {_pct(spread['mean'])}, median {_pct(spread['median'])}, "
                      f"{_pct(spread['min'])} - {_pct(spread['max'])}")
    profile = summary["position_profile"]
    bars = " ▁▂▃▄▅▆▇█"
    peak = max(profile, default=0) or 1
    table.add_row("where tags fall", "start " + "".join(bars[round(8 * v / peak)] for v in profile) + " end")
    console.print(table)
