"""Terminal rendering of a trace: distinct colours with a legend, dim tags, plain text markers."""

from __future__ import annotations

import io

from rich.console import Console

from splitcli import render
from splitcli.trace import Segment, Trace


def _trace() -> Trace:
    trace = Trace(question="q", mode="splitreason", models={"small": "tiny-s", "big": "tiny-b"})
    trace.segments = [Segment("small", "a <bigmodel>", [1, 2]), Segment("big", "hard", [3]),
                      Segment("small", "</bigmodel>so \\boxed{4}", [4, 5])]
    trace.wall_seconds = 1.0
    return trace


def test_colour_view_has_legend_distinct_colours_and_dim_tags() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=100)
    render.show(_trace(), console)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "small: tiny-s" in output and "big: tiny-b" in output
    assert "\x1b[1;36ma " in output  # small text: bold cyan
    assert "\x1b[1;35mhard" in output  # big text: bold magenta
    assert "\x1b[2;1;36m<bigmodel>" in output or "\x1b[1;2;36m<bigmodel>" in output  # tags dimmed
    assert "answer" in output and "4" in output


def test_plain_text_marks_big_segments() -> None:
    assert render.plain_text(_trace()) == "a <bigmodel>[big]hard[/big]</bigmodel>so \\boxed{4}"


def test_plain_stream_prints_small_text_at_once_and_big_text_when_final() -> None:
    out = io.StringIO()
    stream = render.PlainStream(out)
    small = Segment("small")
    stream("open", small)
    small.text = "a <bigmodel>"
    stream("update", small)
    assert out.getvalue() == "a <bigmodel>"
    big = Segment("big")
    stream("open", big)
    big.text = "hard and more"
    stream("update", big)
    assert out.getvalue() == "a <bigmodel>"  # a probe may still cut it
    big.text = "hard"
    stream("open", Segment("small"))
    assert out.getvalue() == "a <bigmodel>[big]hard[/big]"


def test_live_view_shows_legend_the_tail_and_a_footer() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=40, height=8)
    view = render.LiveView(console)
    trace = Trace(question="q", mode="splitreason", models={"small": "s", "big": "b"})
    trace.segments = [Segment("small", "first line of many. " * 50 + "LAST WORDS", [1] * 30), Segment("big", "", [])]
    view.attach(trace)
    console.print(view._renderable())
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "small: s" in output
    assert "LAST WORDS" in output
    assert "small 30 tok" in output and "offload 0.0%" in output
    assert output.count("\n") <= 8  # fits the screen: only the tail is shown


def test_text_that_is_not_kept_is_dimmed_and_left_out_of_plain_output() -> None:
    trace = _trace()
    loser = Segment("small", "LOSER ", [9], kept=False, branch=1)
    trace.segments.insert(1, loser)
    console = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=100)
    render.show(trace, console)
    output = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[1;2;9;36mLOSER" in output or "\x1b[2;1;9;36mLOSER" in output  # dim, struck through
    assert "not kept" in output  # the legend says what dimmed text is
    assert "LOSER" not in render.plain_text(trace)
    assert "(+1 generated, not kept)" in render.plain_summary(trace)


def test_compare_on_80_columns_keeps_run_names_whole_and_the_footnote_below() -> None:
    import io

    from rich.console import Console

    from splitcli import render

    rows = [{"name": f"aime24-{mode}-20261201-123456-abcdef", "mode": mode, "pass@1": 0.5, "pass@1_ci95": [0.3, 0.7],
             "offload_share": 0.05, "seconds_mean": 12.3, "seconds_p90": 20.1, "pareto": True}
            for mode in ("splitreason", "big-only")]
    for width in (80, 140):
        out = io.StringIO()
        render.compare_table(rows, Console(file=out, width=width, force_terminal=False))
        lines = out.getvalue().splitlines()
        footnote = next(i for i, line in enumerate(lines) if line.startswith("* on the Pareto front"))
        assert footnote > next(i for i, line in enumerate(lines) if "splitreason" in line)  # under the rows
        for row in rows:
            assert any(row["name"] in line for line in lines), (width, row["name"])
