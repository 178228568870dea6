"""`splitreason eval` on the real demo pair: end to end, resume after SIGKILL, fingerprints, local data,
comparison and its plot, and one-line errors for data that cannot be had."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import cli

from splitcli import demo
from splitcli.profiles import load_profile

pytestmark = pytest.mark.usefixtures("demo_servers")

# Sampled (not greedy), so that each sample's seed matters: resumed and uninterrupted runs must agree.
SAMPLED = ["--set", "sampling.temperature=0.8", "--n", "3", "--concurrency", "1"]


def _lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def _essence(record: dict[str, Any]) -> tuple[Any, ...]:
    segments = [(s["model"], s["text"], s["token_ids"]) for s in record["trace"]["segments"]]
    return record["problem_id"], record["sample"], record["seed"], record["extracted"], record["correct"], segments


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    usage = {k: v for k, v in results["usage"].items() if k in ("offload_share_mean", "offload_share_median",
                                                                  "handoffs_mean", "tokens")}
    return {"accuracy": results["accuracy"], "usage": usage, "samples": results["samples"],
            "fingerprint": results["fingerprint"]}


def _kv_fits(pair: str) -> int:
    """Samples every model's KV cache holds at the budget, from the servers' own metrics."""
    profile = load_profile(pair)
    fits = []
    for role in ("small", "big"):
        text = httpx.get(f"{profile.spec(role).urls[0]}/metrics", timeout=10).text
        info = next(line for line in text.splitlines() if line.startswith("vllm:cache_config_info{"))
        labels = dict(re.findall(r'(\w+)="([^"]*)"', info))
        fits.append(int(labels["num_gpu_blocks"]) * int(labels["block_size"]) // profile.sampling.max_tokens)
    return max(1, min(256, *fits))


def test_eval_on_the_demo_profile_end_to_end(tmp_path: Path, pair: str) -> None:
    out = tmp_path / "run"
    # No concurrency set: eval sizes it from what the servers' KV caches hold, and says so.
    result = cli("eval", "--profile", pair, "--out", str(out), "--json", "--set", "eval.concurrency=null")
    assert result.code == 0, result.err
    summary = result.json()
    fits = _kv_fits(pair)
    assert summary["concurrency"] == fits  # type: ignore[index]
    assert f"· concurrency {fits} (not set: what the KV caches hold at 1024 tokens a sample, small " in result.err
    rate, tokens = summary["throughput"], summary["usage"]["tokens"]  # type: ignore[index]
    assert rate["samples_per_second"] > 0 and set(rate["tokens_per_second"]) == {"small", "big"}
    # One wall clock for both models: their rates stand as their tokens do.
    assert abs(rate["tokens_per_second"]["small"] / rate["tokens_per_second"]["big"] - tokens["small"] / tokens["big"]) < 0.05
    assert summary["task"] == "demo" and summary["mode"] == "splitreason"  # type: ignore[index]
    assert summary["problems"] == len(demo.QUESTIONS) and summary["n"] == 1 and summary["errored"] == 0  # type: ignore[index]
    assert summary["accuracy"]["pass@1"] == 1.0  # type: ignore[index]  # the demo models know their answers
    assert summary["usage"]["offload_share_mean"] > 0 and summary["usage"]["handoffs_mean"] == 2  # type: ignore[index]
    # Every probe went through the route: one call per big segment here, none the slow way round.
    assert summary["usage"]["probe_calls"] == {"route": 4, "openai": 0, "route_failed": 0}  # type: ignore[index]
    lines = _lines(out)
    assert sorted(r["problem_id"] for r in lines) == [f"demo-{i}" for i in range(1, 5)]
    first = lines[0]
    assert {"problem_id", "sample", "seed", "gold", "extracted", "correct", "reason", "seconds", "tokens",
            "trace", "error"} <= set(first)
    assert first["trace"]["mode"] == "splitreason" and first["reason"] == "equal to the gold answer (Math-Verify)"
    assert json.loads((out / "results.json").read_text())["accuracy"] == summary["accuracy"]  # type: ignore[index]
    fingerprint = json.loads((out / "run.json").read_text())["fingerprint"]
    assert fingerprint["config"]["problems_hash"] and fingerprint["config"]["versions"]["math-verify"]
    assert fingerprint["served"]["small"]["vllm"] and fingerprint["served"]["big"]["template_hash"]


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = cli("eval", *SAMPLED, "--out", str(whole), "--json")
    assert done.code == 0, done.err

    proc = subprocess.Popen([sys.executable, "-m", "splitcli", "eval", *SAMPLED, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = killed / "samples.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not samples.exists() or len(samples.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(samples.read_text().splitlines())
    assert 4 <= written < 12
    with open(samples, "a") as handle:  # as if it died halfway through writing a line
        handle.write('{"problem_id": "demo-3", "sam')

    resumed = cli("eval", "--resume", str(killed), "--json")
    assert resumed.code == 0, resumed.err
    assert f"resuming {killed}: {written} of 12 samples already done, {12 - written} to go" in resumed.err
    lines = _lines(killed)
    assert len(lines) == 12  # the torn line dropped, nothing duplicated
    assert len({(r["problem_id"], r["sample"]) for r in lines}) == 12
    assert sorted(map(_essence, lines)) == sorted(map(_essence, _lines(whole)))
    assert _comparable(resumed.json()) == _comparable(done.json())  # type: ignore[arg-type]
    assert len({r["seed"] for r in lines}) == 12  # one seed per (problem, sample)


def test_resume_with_other_settings_is_refused_listing_what_differs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli("eval", "--out", str(out), "--limit", "1").code == 0
    result = cli("eval", "--resume", str(out), "--set", "sampling.temperature=0.5", "--set", "sampling.seed=3")
    assert result.code == 2
    assert result.err.strip() == (
        f"error: --resume {out}: this run differs from the one there in: sampling.seed (0 then, 3 now); "
        "sampling.temperature (0.0 then, 0.5 now) (resume with the same settings, or start a new run)"
    )
    again = cli("eval", "--out", str(out))
    assert again.code == 2 and f"--out {out}: a run is already there (continue it with --resume {out}" in again.err


def test_a_local_set_runs_through_the_same_code_path(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "problem": q.question, "answer": q.answer} for i, q in enumerate(demo.QUESTIONS)]
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "test.csv").write_text("id,problem,answer\n" + "".join(f'{r["id"]},"{r["problem"]}",{r["answer"]}\n'
                                                                       for r in rows[:2]))
    for data, problems in ((jsonl, 4), (folder, 2)):
        result = cli("eval", "--data", str(data), "--out", str(tmp_path / f"out-{data.name}"), "--json")
        assert result.code == 0, result.err
        summary = result.json()
        assert summary["problems"] == problems and summary["accuracy"]["pass@1"] == 1.0  # type: ignore[index]
        assert summary["fingerprint"]["config"]["dataset"] == str(data)  # type: ignore[index]


def test_compare_puts_runs_side_by_side_and_plots_them(tmp_path: Path) -> None:
    runs = []
    for mode in ("splitreason", "big-only", "small-only"):
        out = tmp_path / mode
        assert cli("eval", "--mode", mode, "--out", str(out)).code == 0
        runs.append(str(out))
    plot = tmp_path / "teaser.png"
    result = cli("eval", "compare", *runs, "--plot", str(plot), "--json")
    assert result.code == 0, result.err
    rows = {row["mode"]: row for row in result.json()}  # type: ignore[union-attr]
    assert set(rows) == {"splitreason", "big-only", "small-only"}
    assert all(row["pass@1"] == 1.0 for row in rows.values())
    assert rows["big-only"]["offload_share"] == 1.0 and rows["small-only"]["offload_share"] == 0.0
    assert any(row["pareto"] for row in rows.values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000

    fewer = tmp_path / "fewer"
    assert cli("eval", "--limit", "2", "--out", str(fewer)).code == 0
    refused = cli("eval", "compare", runs[0], str(fewer))
    assert refused.code == 2
    assert refused.err.strip().startswith(f"error: {fewer} and {runs[0]} ran different problems (problems_hash: ")


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--task", "aime24"], {}, "error: task aime24: cannot load HuggingFaceH4/aime_2024 from the Hugging Face hub ("),
    (["--task", "gpqa-diamond"], {"HF_TOKEN": ""},
     "error: task gpqa-diamond: Idavidrein/gpqa is gated: accept its terms on huggingface.co and set HF_TOKEN "
     "(in the environment or .env), or run a local copy with --data FILE (JSONL/parquet/CSV with id, problem, answer)"),
    (["--task", "nope"], {}, "error: unknown task 'nope' (choose one of: demo, aime24, aime25, math500, gpqa-diamond; "
                             "or run any set with --data FILE)"),
    (["--data", "/no/such.jsonl"], {}, "error: /no/such.jsonl: no such file or folder (give a JSONL, parquet or CSV "
                                       "file, or a dataset folder)"),
])
def test_data_that_cannot_be_had_is_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    result = cli("eval", *args, env=env)
    assert result.code == 2
    assert result.err.strip().startswith(message)
    assert len(result.err.strip().splitlines()) == 1
    if "hub (" in message:
        assert result.err.strip().endswith("or run a local copy with --data FILE (JSONL/parquet/CSV with id, problem, "
                                           "answer)")


def test_probes_the_slow_way_round_are_counted_shown_and_said(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = cli("eval", "--profile", "demo", "--out", str(out), "--set", "modes.splitreason.probe_route=false")
    assert result.code == 0, result.err
    usage = json.loads((out / "results.json").read_text())["usage"]
    assert usage["probe_calls"] == {"route": 0, "openai": 4, "route_failed": 0}
    assert "route 0, OpenAI API 4, route failed 0" in result.out  # the summary table's row
    assert ("warning: 4 of 4 probe calls went over the OpenAI API (every prefix resending the context); each "
            "sample's trace says why in its calls") in " ".join(result.err.split())
    calls = [call for line in _lines(out) for call in line["trace"]["calls"] if call["kind"] == "probe"]
    assert {(call["path"], call["why"]) for call in calls} == {("openai", "probe_route is off")}
