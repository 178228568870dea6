"""GPU evidence on a lent H100/H200, with the project's own launcher and modes: random-weight models
of real shapes, CUDA graphs on. The pair (SPLITREASON_GPU_PAIR): `qwen3` (default), the Qwen3-1.7B
and Qwen3-8B shapes with the real Qwen3 tokenizer, chat template and generation_config (shipped in
splitcli/assets/qwen3); `r1`, the R1-Distill-Qwen 1.5B and 7B shapes with the demo tokenizer.

    python benchmarks/gpu_bench.py WORK models    # random weights (seconds on a GPU)
    python benchmarks/gpu_bench.py WORK serve     # small and big
    python benchmarks/gpu_bench.py WORK route-cases  # the route on partly cached prompts, against OpenAI probes
    python benchmarks/gpu_bench.py WORK decode    # single-stream decode rates
    python benchmarks/gpu_bench.py WORK probe     # probe cost per big chunk at 1k..16k: before and after
    python benchmarks/gpu_bench.py WORK handoff   # time to the other model's first token, cold and warm
    python benchmarks/gpu_bench.py WORK e2e [4096 16384] [MODE,...]  # forced ~5%-offload traces, seven rows, vs ideal
    python benchmarks/gpu_bench.py WORK throughput [1 8 32 64] [MODE,...]  # C samples in flight, as eval runs them
    python benchmarks/gpu_bench.py WORK eval-throughput [64] [MODE,...]  # the same through `splitreason eval`
    (MODE@KEY=VALUE: a mode with profile knobs of its own, e.g. bench-splitreason-stream@gather.share=0)
    python benchmarks/gpu_bench.py WORK e2e-spec [2048]    # spec-decoding (starts its server; slow: see below)
    python benchmarks/gpu_bench.py WORK session [small big]  # handoff to a live request (vLLM streaming input) vs a new one
    python benchmarks/gpu_bench.py WORK lifecycle # a foreign process, kill-gpus, stop
    python benchmarks/gpu_bench.py WORK vocab     # does vLLM take a 151936-row draft for a 152064-row target?

Both servers share GPU 0 at memory shares sized for an H200 (0.28 / 0.45); on an 80 GB H100 set
GPU_BENCH_SHARES=0.33,0.55 (session 12), where 64 samples of 4096 tokens still overflow the caches.

Each phase writes WORK/<phase>.json (and copies it to $OUT when set). Random weights never write
<bigmodel>: the e2e phase forces a tag every `every` small tokens (a test-only mode registered here,
not shipped), and the big segment runs to its cap, so every chunk is probed in full (the worst case
for probing). The end-of-text rows of the output layer are zeroed so that greedy decoding of random
weights does not stop early.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PAIR = os.environ.get("SPLITREASON_GPU_PAIR", "qwen3")
if PAIR not in ("qwen3", "r1"):
    raise SystemExit(f"SPLITREASON_GPU_PAIR={PAIR!r}: use qwen3 or r1")
QWEN3_SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab, tied (head_dim 128)
    "small": (2048, 28, 16, 8, 6144, 151936, True),  # Qwen3-1.7B
    "big": (4096, 36, 32, 8, 12288, 151936, False),  # Qwen3-8B
}
SHAPES = {  # hidden, layers, heads, kv heads, intermediate, vocab (None: the tokenizer's), tied
    "small": (1536, 28, 12, 2, 8960, None, True),  # R1-Distill-Qwen-1.5B
    "big": (3584, 28, 28, 4, 18944, None, False),  # R1-Distill-Qwen-7B
    # For the vocabulary question only: tiny models with the real sizes, 151936 vs 152064 rows.
    "draft-151936": (256, 2, 4, 4, 512, 151936, True),
    "target-152064": (256, 2, 4, 4, 512, 152064, False),
}
CONTEXTS = (1024, 4096, 8192, 16384)
CHUNK = 64
APPENDED = (1, 8, CHUNK)  # session: tokens appended to a live request
LENGTH = int(os.environ.get("GPU_BENCH_LENGTH", "4096"))  # throughput: each sample's token budget
FORCED_EVERY = int(os.environ.get("GPU_BENCH_EVERY", "972"))  # e2e: small tokens between forced tags; big
# segments of 51 tokens: ~5% offload
HERE = Path(__file__).resolve().parent


def cli(*args: str, timeout: float = 1500) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "splitcli", *args], capture_output=True, text=True, timeout=timeout)
    return {"args": list(args), "code": done.returncode, "seconds": round(time.monotonic() - started, 2),
            "out": done.stdout[-4000:], "err": done.stderr[-4000:]}


def root() -> Path:
    return Path(os.environ["SPLITREASON_HOME"]) / ("gpu-models" if PAIR == "r1" else "gpu-models-qwen3")


def profile_file(out: Path) -> Path:
    """small + big on GPU 0 (CUDA graphs), big's spec server drafted by the small model; memory
    shares as measured for each pair's shapes."""
    models = root()
    path = out / "gpu-pair.yaml"
    if os.environ.get("GPU_BENCH_PROFILE"):  # a dry run of the phases on other servers (e.g. the CPU demo pair)
        path.write_text(Path(os.environ["GPU_BENCH_PROFILE"]).read_text())
        return path
    described, small_share, big_share = {
        # Sized from the workload: each model's KV cache holds 64 samples of 4096 tokens (Qwen3-1.7B
        # 112 KiB a token, ~290k tokens at 0.28; 8B 144 KiB, ~320k at 0.45). At 0.16 the small server
        # held ~160k and preempted at C = 64 (session 6).
        "qwen3": ("random-weight Qwen3 1.7B + 8B shapes, the real Qwen3 tokenizer, one GPU, CUDA graphs", 0.28, 0.45),
        "r1": ("random-weight R1-Distill-Qwen 1.5B + 7B shapes on one GPU, CUDA graphs", 0.08, 0.25),
    }[PAIR]
    if os.environ.get("GPU_BENCH_SHARES"):  # e.g. "0.33,0.55" on an 80 GB H100 (the shares above are an H200's)
        small_share, big_share = (float(share) for share in os.environ["GPU_BENCH_SHARES"].split(","))
    path.write_text(f"""description: {described}
small: {{model: {models / 'small'}, served_name: small, port: 8301, gpus: [0], gpu_memory: {small_share},
        max_model_len: 20480, dtype: bfloat16, extra_args: [--prefix-caching-hash-algo, xxhash]}}
big: {{model: {models / 'big'}, served_name: big, port: 8302, gpus: [0], gpu_memory: {big_share},
      max_model_len: 20480, dtype: bfloat16,
      speculative: {{method: draft_model, num_speculative_tokens: 5, port: 8312}}}}
sampling: {{temperature: 0.0, max_tokens: 20480, seed: 0}}
""")
    return path


# ---------------------------------------------------------------- phases


def qwen3_models(out: Path) -> dict[str, Any]:
    """Qwen3-1.7B and -8B shapes (Qwen3ForCausalLM) with the real tokenizer and Qwen3's generation_config."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    from splitcli import demo

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(demo.qwen3_tokenizer_files(root() / "tokenizer"))
    ends = list(demo.QWEN3_ENDS)
    for role, (hidden, layers, heads, kv, inter, size, tied) in QWEN3_SHAPES.items():
        target = root() / role
        if (target / "config.json").is_file():
            continue
        config = Qwen3Config(vocab_size=size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             num_key_value_heads=kv, intermediate_size=inter, head_dim=128,
                             max_position_embeddings=40960, rope_theta=1000000.0, tie_word_embeddings=tied,
                             bos_token_id=ends[1], eos_token_id=ends[0])
        with torch.device("meta"):
            model = Qwen3ForCausalLM(config)
        model = model.to_empty(device="cuda").to(torch.bfloat16)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.fill_(1.0) if "norm" in name else param.normal_(0, 0.02)
            if tied:
                model.tie_weights()
            model.get_output_embeddings().weight[ends] = 0
        model.generation_config = GenerationConfig(bos_token_id=ends[1], eos_token_id=ends, pad_token_id=ends[1],
                                                   do_sample=True, temperature=0.6, top_k=20, top_p=0.95)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        del model
        torch.cuda.empty_cache()
    return {"seconds": round(time.monotonic() - started, 1), "pair": PAIR,
            "shapes": {k: list(v) for k, v in QWEN3_SHAPES.items()}}


def models(out: Path) -> dict[str, Any]:
    if PAIR == "qwen3":
        return qwen3_models(out)
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from splitcli import demo, vocab

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(demo.resolve_model("demo:small"))
    ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    for role, (hidden, layers, heads, kv, inter, size, tied) in SHAPES.items():
        target = root() / role
        if (target / "config.json").is_file():
            continue
        config = Qwen2Config(vocab_size=size or len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter,
                             max_position_embeddings=32768, tie_word_embeddings=tied, head_dim=hidden // heads,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        with torch.device("meta"):
            model = Qwen2ForCausalLM(config)
        model = model.to_empty(device="cuda").to(torch.bfloat16)
        with torch.no_grad():  # random weights made on the GPU: no slow CPU initialisation
            for name, param in model.named_parameters():
                param.fill_(1.0) if "norm" in name else param.normal_(0, 0.02)
            if tied:
                model.tie_weights()
            model.get_output_embeddings().weight[ends] = 0  # logit 0: under the best random one, never chosen
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        del model
        torch.cuda.empty_cache()
    padded = root() / "draft-152064"
    if not (padded / "config.json").is_file():
        vocab.pad_vocab(root() / "draft-151936", padded, 152064)
    return {"seconds": round(time.monotonic() - started, 1),
            "shapes": {k: list(v) for k, v in SHAPES.items()}}


def serve(out: Path) -> dict[str, Any]:
    path = out / "gpu-pair.yaml"
    steps = [cli("serve", "--profile", str(path), "--only", "small,big", "--detach"), cli("ps", "--json")]
    return {"steps": steps}


def _clients(urls: dict[str, str]) -> dict[str, Any]:
    from splitcli.engine import EngineClient

    return {name: EngineClient("small" if "small" in name else "big", served, [url], "gpu bench")
            for name, (served, url) in {k: (v.split("|")[0], v.split("|")[1]) for k, v in urls.items()}.items()}


SERVERS = {"small": "small|http://127.0.0.1:8301", "big": "big|http://127.0.0.1:8302"}


def _context(length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(10, 500) for _ in range(length)]


async def _timed(coroutine: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await coroutine
    return time.perf_counter() - started, result


async def _median(call: Any, *args: Any, repeats: int = 3, **kwargs: Any) -> float:
    """Median seconds of `await call(*args, **kwargs)` over `repeats` runs."""
    times = []
    for _ in range(repeats):
        seconds, _ = await _timed(call(*args, **kwargs))
        times.append(seconds)
    return round(statistics.median(times), 4)


async def probe_costs(with_big: bool = True) -> dict[str, Any]:
    """Per big chunk (64 tokens): probing every prefix over the OpenAI API (each prefix resends the
    context) against the continuations route (the context sent once), as the modes call them."""
    clients = _clients(SERVERS)
    rows = []
    try:
        for length in CONTEXTS:
            base = _context(length, length)
            for name in ("small", "big") if with_big else ("small",):
                await clients[name].complete([base], max_tokens=1)  # cache the context, as at run time
            row: dict[str, Any] = {"context": length}
            seeds = iter(range(length * 100, length * 100 + 1000))  # every probe of a new chunk: nothing cached
            for label, buckets in (("before: 64 prefixes x 6 tokens, one OpenAI request", None),
                                   ("after: continuations route, one request", [CHUNK]),
                                   ("after: route, 8 requests of 8 prefixes (stream buckets)", [8] * 8)):
                row[label] = await _median(_probe_chunk, clients["small"], base, buckets, seeds)
            row["one cached prompt"] = await _median(clients["small"].complete, [base + _context(CHUNK, 7)], max_tokens=1)
            row["route answer, one more chunk"] = await _route_answer(base + _context(CHUNK, next(seeds)), len(base) + 1)
            if with_big:
                row["big decodes the 64-token chunk"] = await _median(clients["big"].complete, [base],
                                                                      max_tokens=CHUNK, temperature=0.0)
                row["route / big chunk"] = round(row["after: continuations route, one request"]
                                                 / row["big decodes the 64-token chunk"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for client in clients.values():
            await client.aclose()
    return {"chunk": CHUNK, "rows": rows}


async def _probe_chunk(client: Any, base: list[int], buckets: list[int] | None, seeds: Any) -> None:
    """Probe every prefix of a new 64-token chunk after `base`: over the OpenAI API (None), or through
    the continuations route in requests of `buckets` prefixes."""
    from splitcli.engine import Prefixed

    chunk = _context(CHUNK, next(seeds))
    if buckets is None:
        prompts: list[Any] = [Prefixed(base, chunk[:i]) for i in range(1, CHUNK + 1)]
        await client.complete(prompts, max_tokens=6, temperature=0.0, token_ids=False)
        return
    done = 0
    for size in buckets:
        texts, why = await client.continuations(base + chunk[:done + size], len(base) + done + 1, 6, "</big")
        if texts is None or len(texts) != size:
            raise RuntimeError(f"the route failed: {why}")
        done += size


# (context, chunk, cached up to): the context's prefix already in the cache when the route is asked.
# 16-token blocks on the GPU: at run time the small model's context is cached to its last full block,
# so anywhere before `first - 1`, and a repeated probe has part of the chunk cached too.
ROUTE_CASES = [(1040, 31, 1040), (1040, 31, 1024), (1040, 31, 1008), (1040, 31, 1056),
               (16384, 31, 16384), (16384, 31, 16368), (16384, 31, 16352), (16384, 31, 16400)]


async def route_cases(url: str, model: str, cases: list[tuple[int, int, int]] = ROUTE_CASES,
                      probe_tokens: int = 6) -> list[dict[str, Any]]:
    """The continuations route where the prefix cache holds part of the prompt, against probing every
    prefix over the OpenAI API: per case, the route's status, what it read from the cache, and the
    prefixes whose answer is not what the full probe says (a start of it, where it cannot close)."""
    import httpx

    from splitcli.engine_route import PATH

    rows = []
    async with httpx.AsyncClient(timeout=300) as http:
        for number, (context, chunk, cached_to) in enumerate(cases):
            ids = _context(context + chunk, 7919 * (number + 1))  # a sequence of its own: nothing cached before
            warm = await http.post(f"{url}/v1/completions", json={"model": model, "prompt": ids[:cached_to],
                                                                    "max_tokens": 1, "temperature": 0.0})
            warm.raise_for_status()
            started = time.perf_counter()
            routed = await http.post(url + PATH, json={"prompt": ids, "first": context + 1, "max_tokens": probe_tokens,
                                                       "marker": "</big", "skip_special_tokens": True})
            seconds = time.perf_counter() - started
            row: dict[str, Any] = {"context": context, "chunk": chunk, "cached_to": cached_to,
                                   "status": routed.status_code, "route_s": round(seconds, 4)}
            if routed.status_code != 200:
                row["error"] = routed.text[:300]
                rows.append(row)
                continue
            answer = routed.json()
            full = await http.post(f"{url}/v1/completions", json={
                "model": model, "prompt": [ids[:length] for length in range(context + 1, len(ids) + 1)],
                "max_tokens": probe_tokens, "temperature": 0.0})
            full.raise_for_status()
            texts = [choice["text"] for choice in sorted(full.json()["choices"], key=lambda c: c["index"])]
            wrong = [i for i, (mine, theirs) in enumerate(zip(answer["texts"], texts, strict=True))
                     if mine != theirs and not (theirs.startswith(mine) and "</big" not in theirs)]
            row.update({key: answer.get(key) for key in ("cached_tokens", "unscored", "decoded", "settled", "seconds")},
                       texts=len(answer["texts"]), wrong=wrong)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


async def _route_answer(prompt: list[int], first: int) -> dict[str, Any]:
    """The route's own answer for one chunk, less the texts: the server-side seconds of its first
    (scores) pass and of the whole request, how many prefixes it decoded in full and settled."""
    import httpx

    from splitcli.engine_route import PATH

    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(SERVERS["small"].split("|")[1] + PATH, json={
            "prompt": prompt, "first": first, "max_tokens": 6, "marker": "</big", "skip_special_tokens": True})
    response.raise_for_status()
    return {key: value for key, value in response.json().items() if key != "texts"}


async def decode_rates() -> dict[str, Any]:
    clients = _clients(SERVERS)
    rates = {}
    try:
        prompt = _context(64, 7)
        for name in ("small", "big"):
            await clients[name].complete([prompt], max_tokens=16)
            seconds, (result,) = await _timed(clients[name].complete([prompt], max_tokens=512, temperature=0.0))
            rates[name] = {"tokens": len(result.token_ids), "seconds": round(seconds, 3),
                           "tokens_per_s": round(len(result.token_ids) / seconds, 1)}
    finally:
        for client in clients.values():
            await client.aclose()
    return rates


async def handoffs() -> dict[str, Any]:
    """Time from the handoff to the receiving model's first token, and its uncached prompt tokens,
    each the median of 3 (fresh contexts each time): cold (the last segment is new to it), warm (it
    got the context up to 8 tokens before, as `warm_every` sends it) and live (that warm-up kept
    alive in its engine, `live_handoff`: only the last 8 tokens are sent)."""
    clients = _clients(SERVERS)
    rows = []
    try:
        for length in CONTEXTS:
            for receiver, segment in (("small", 64), ("big", 256)):
                client = clients[receiver]
                cold, warm, live = [], [], []
                for repeat in range(3):
                    seed = 100 * length + 10 * repeat
                    base, new = _context(length, seed), _context(segment, seed + 1)
                    await client.complete([base], max_tokens=1)
                    cold.append(await _first_token(client, base + new))
                    base, new = _context(length, seed + 2), _context(segment, seed + 3)
                    await client.complete([base + new[:-8]], max_tokens=1)
                    warm.append(await _first_token(client, base + new))
                    base, new = _context(length, seed + 4), _context(segment, seed + 5)
                    opened = await client.live_open(base + new[:-8])
                    assert opened is not None, f"the {receiver} server has no live route"
                    live.append(await _first_live_token(client, opened, new[-8:]))
                rows.append({"context": length, "to": receiver, "new_tokens": segment,
                             "cold_s": round(statistics.median(t for t, _ in cold), 4),
                             "cold_uncached": cold[0][1].prompt_tokens - cold[0][1].cached_tokens,
                             "warm_s": round(statistics.median(t for t, _ in warm), 4),
                             "warm_uncached": warm[0][1].prompt_tokens - warm[0][1].cached_tokens,
                             "live_s": round(statistics.median(live), 4), "live_uncached": 8})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for client in clients.values():
            await client.aclose()
    return {"rows": rows}


async def _first_token(client: Any, prompt: list[int]) -> tuple[float, Any]:
    started = time.perf_counter()
    first: list[float] = []
    result = await client.stream(prompt, max_tokens=2, on_delta=lambda t, i: first.append(time.perf_counter()))
    return first[0] - started, result


async def _first_live_token(client: Any, live: Any, tokens: list[int]) -> float:
    started = time.perf_counter()
    first: list[float] = []
    await client.live_stream(live, tokens, max_tokens=2, on_delta=lambda t, i: first.append(time.perf_counter()))
    return first[0] - started


def forced_modes() -> list[str]:
    """Register the test-only forced modes (a tag every FORCED_EVERY small tokens, big segments of 51)
    and return the --set knobs that configure them and random-switch for ~5% offload."""
    from splitcli.modes import register
    from splitcli.modes.splitreason import SplitReason
    from splitcli.modes.splitreason_stream import SplitReasonStream
    from splitcli.session import Session
    from splitcli.trace import Trace

    every = FORCED_EVERY

    def forcing(base: type) -> type:
        class Forced(base):  # type: ignore[misc,valid-type]
            async def run(self, session: Session, trace: Trace) -> None:
                while session.room() > 0:
                    segment, _ = await session.write("small", min(every, session.room()))
                    if session.room() <= len(session.open_ids):
                        return
                    segment.token_ids += session.open_ids  # as if the small model wrote the tag
                    segment.text += session.tags.open_tag
                    session.commit("small", session.open_ids, session.tags.open_tag)
                    if await self._big_segment(session):
                        return

        return Forced

    register(type("ForcedSplitReason", (forcing(SplitReason),), {"name": "bench-splitreason"}))
    register(type("ForcedStream", (forcing(SplitReasonStream),), {"name": "bench-splitreason-stream"}))
    register(type("ForcedStreamLive", (forcing(SplitReasonStream),), {"name": "bench-splitreason-stream-live"}))
    register(type("ForcedStreamWarm", (forcing(SplitReasonStream),), {"name": "bench-splitreason-stream-warm"}))
    return ["modes.bench-splitreason.big_segment_cap=51", "modes.bench-splitreason-stream.big_segment_cap=51",
            "modes.bench-splitreason-stream-live.big_segment_cap=51",
            "modes.bench-splitreason-stream-live.warm_every=128", "modes.bench-splitreason-stream-live.live_handoff=true",
            "modes.bench-splitreason-stream-warm.big_segment_cap=51", "modes.bench-splitreason-stream-warm.warm_every=128",
            "modes.random-switch.ratio=19", "modes.random-switch.chunk=32", "modes.random-switch.seed=0"]


def e2e(out: Path, lengths: list[int], modes: tuple[str, ...] = ("bench-splitreason-stream", "bench-splitreason-stream-warm",
                                                                  "bench-splitreason-stream-live", "bench-splitreason",
                                                                  "big-only", "random-switch", "small-only"),
        name: str = "e2e") -> dict[str, Any]:
    """Forced ~5%-offload traces in each mode on the same servers, next to the ideal time. Rows are
    written as they come (WORK/NAME-rows.jsonl, and $OUT) so that a call cut short keeps them."""
    from splitcli.profiles import load_profile
    from splitcli.solve import run_question

    every = FORCED_EVERY
    knobs = forced_modes()
    rates = json.loads((out / "decode.json").read_text()) if (out / "decode.json").exists() else None
    results = []
    sinks = [out / f"{name}-rows.jsonl", *([Path(os.environ["OUT"]) / f"{name}-rows.jsonl"] if os.environ.get("OUT") else [])]
    for length in lengths:
        for label in modes:
            mode, own = _variant(label)
            profile = load_profile(str(out / "gpu-pair.yaml"), [*knobs, f"sampling.max_tokens={length}", *own])
            trace = asyncio.run(run_question(profile, "Say something long.", mode))
            stats = trace.stats()
            probe_s = sum(call.seconds for call in trace.calls if call.kind == "probe")
            row = {"length": length, "mode": label, "error": trace.error, "wall_s": stats["wall_seconds"],
                   "big_generate_s": stats["generate_seconds"]["big"], "probe_s": round(probe_s, 3),
                   "tokens": stats["tokens"], "spent": stats["spent_tokens"], "offload": stats["offload_share"],
                   "handoffs": stats["handoffs"], "mean_handoff_latency_s": stats["mean_handoff_latency_s"],
                   "handoffs_to": _handoffs_by_receiver(stats["handoff_costs"]),
                   "requests": stats["requests"], "probe_calls": stats["probe_calls"],
                   "speculative": trace.extra.get("speculative")}
            if rates:
                row["ideal_s"] = round(stats["tokens"]["small"] / rates["small"]["tokens_per_s"]
                                       + stats["tokens"]["big"] / rates["big"]["tokens_per_s"], 3)
                row["vs_ideal"] = round(row["wall_s"] / row["ideal_s"], 3) if row["ideal_s"] else None
            results.append(row)
            print(json.dumps(row), flush=True)
            for sink in sinks:
                with sink.open("a") as rows_file:
                    rows_file.write(json.dumps(row) + "\n")
    return {"every": every, "cap": 51, "rows": same_run_ideal(results)}


THROUGHPUT_MODES = ("small-only", "big-only", "bench-splitreason-stream", "bench-splitreason")


def _engine_counters(url: str) -> dict[str, float]:
    """vLLM's prefix-cache and preemption counters (summed over labels) from its /metrics."""
    import httpx

    wanted = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits", "vllm:num_preemptions",
              "vllm:request_queue_time_seconds_sum", "vllm:request_queue_time_seconds_count")
    counters: dict[str, float] = dict.fromkeys(wanted, 0.0)
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        name = line.split("{")[0].split(" ")[0].removesuffix("_total")
        if name in counters and not line.startswith("#"):
            counters[name] += float(line.rsplit(" ", 1)[1])
    return counters


def _counter_change(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    change = {name.removeprefix("vllm:"): round(after[name] - before[name], 3) for name in before}
    queries = change["prefix_cache_queries"]
    change["prefix_cache_hit_rate"] = round(change["prefix_cache_hits"] / queries, 4) if queries else None
    count, waited = change.pop("request_queue_time_seconds_count"), change.pop("request_queue_time_seconds_sum")
    change["mean_queue_s"] = round(waited / count, 4) if count else None
    return change


def _variant(label: str) -> tuple[str, list[str]]:
    """`MODE@KEY=VALUE@KEY=VALUE`: a mode run with profile knobs of its own, e.g.
    `bench-splitreason-stream@gather.share=0` (no waves)."""
    mode, *knobs = label.split("@")
    return mode, knobs


async def _in_flight(profile: Any, mode: str, level: int) -> tuple[float, list[Any]]:
    """`level` samples of `mode` at once over one pool per model: the wall time and their traces."""
    from splitcli.modes import get_mode
    from splitcli.solve import close_clients, open_clients, run_question

    clients = open_clients(profile, get_mode(mode).server_keys(), max_connections=max(64, level * 4))
    try:
        started = time.perf_counter()
        traces = await asyncio.gather(*(run_question(profile, f"Say something long, sample {index}.", mode,
                                                     clients=clients) for index in range(level)))
        return time.perf_counter() - started, list(traces)
    finally:
        await close_clients(clients)


def throughput(out: Path, levels: list[int], length: int = 4096,
               modes: tuple[str, ...] = THROUGHPUT_MODES) -> dict[str, Any]:
    """C samples in flight over one pool per model, exactly as `evals/runner.run_samples` runs an
    eval, each sample its own question (no shared prefix past the prompt): tokens/s summed over all
    samples per mode, the ideal from the same C's small-only and big-only rates, and vLLM's
    prefix-cache and queueing counters over each run."""
    from splitcli.profiles import load_profile

    knobs = forced_modes()
    rows = []
    sinks = [out / "throughput-rows.jsonl",
             *([Path(os.environ["OUT"]) / "throughput-rows.jsonl"] if os.environ.get("OUT") else [])]
    for level in levels:
        for label in modes:
            mode, own = _variant(label)
            profile = load_profile(str(out / "gpu-pair.yaml"), [*knobs, f"sampling.max_tokens={length}", *own])
            urls = {"small": profile.small.urls[0], "big": profile.big.urls[0]}
            before = {name: _engine_counters(url) for name, url in urls.items()}
            wall, traces = asyncio.run(_in_flight(profile, mode, level))
            after = {name: _engine_counters(url) for name, url in urls.items()}
            stats = [trace.stats() for trace in traces]
            tokens = {model: sum(s["tokens"][model] for s in stats) for model in ("small", "big")}
            probe_calls: dict[str, int] = {}
            for s in stats:
                for path, count in s["probe_calls"].items():
                    probe_calls[path] = probe_calls.get(path, 0) + count
            waited = [segment.waited for t in traces for segment in t.segments if segment.model == "big"]
            row = {"concurrency": level, "mode": label, "length": length, "wall_s": round(wall, 3),
                   "errors": [t.error for t in traces if t.error][:3], "tokens": tokens,
                   "tokens_per_s": round(sum(tokens.values()) / wall, 1),
                   "offload": round(tokens["big"] / max(1, sum(tokens.values())), 4),
                   "probe_s": round(sum(call.seconds for t in traces for call in t.calls if call.kind == "probe"), 2),
                   "big_generate_s": round(sum(s["generate_seconds"]["big"] for s in stats), 2),
                   "handoffs": sum(s["handoffs"] for s in stats), "probe_calls": probe_calls,
                   "gather": {"share": profile.gather.share, "wait_s": profile.gather.wait_s,
                              "segments_waited": sum(w > 0 for w in waited), "waited_s": round(sum(waited), 2),
                              "big_segments": len(waited)},
                   "engine": {name: _counter_change(before[name], after[name]) for name in urls}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            for sink in sinks:
                with sink.open("a") as rows_file:
                    rows_file.write(json.dumps(row) + "\n")
    for row in rows:  # the ideal: the two models time-sharing the GPU at this C's single-model rates
        alone = {model: next((r for r in rows if r["concurrency"] == row["concurrency"] and r["mode"] == f"{model}-only"),
                             None) for model in ("small", "big")}
        if all(alone.values()):
            ideal = sum(row["tokens"][model] / alone[model]["tokens_per_s"] for model in ("small", "big"))
            row["ideal_s"] = round(ideal, 3)
            row["vs_ideal"] = round(row["wall_s"] / ideal, 3)
            row["vs_big_only"] = round(row["tokens_per_s"] / alone["big"]["tokens_per_s"], 3)
    return {"every": FORCED_EVERY, "cap": 51, "rows": rows}


def eval_throughput(out: Path, levels: list[int], modes: tuple[str, ...], length: int = 4096) -> dict[str, Any]:
    """The shipped path: `splitreason eval --data FILE --concurrency C` run by the CLI in this process
    (where the forced modes are registered), C problems of one sample each; results.json's wall time
    and tokens/s per model (spent tokens, as eval's progress bar counts them)."""
    from typer.testing import CliRunner

    from splitcli.cli import app

    knobs = forced_modes()
    rows = []
    for level in levels:
        data = out / f"eval-problems-{level}.jsonl"
        data.write_text("".join(json.dumps({"id": f"p{index}", "problem": f"Say something long, problem {index}.",
                                            "answer": "0"}) + "\n" for index in range(level)))
        for label in modes:
            mode, own = _variant(label)
            folder = out / f"eval-{level}-{label.replace('@', '_').replace('=', '-')}-{int(time.time())}"
            sets = [arg for knob in [*knobs, f"sampling.max_tokens={length}", *own] for arg in ("--set", knob)]
            args = ["eval", "--profile", str(out / "gpu-pair.yaml"), "--task", "math500", "--data", str(data),
                    "--mode", mode, "--n", "1", "--concurrency", str(level), "--out", str(folder), "--json", *sets]
            done = CliRunner().invoke(app, args)
            results = json.loads((folder / "results.json").read_text()) if (folder / "results.json").exists() else {}
            row = {"concurrency": level, "mode": label, "code": done.exit_code,
                   "wall_s": results.get("wall_seconds"), "throughput": results.get("throughput"),
                   "probe_calls": (results.get("usage") or {}).get("probe_calls"),
                   "errored": results.get("errored"), "tail": done.output[-600:] if done.exit_code else ""}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"every": FORCED_EVERY, "cap": 51, "length": length, "rows": rows}


def _handoffs_by_receiver(costs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per receiving model: how many handoffs, their median latency and uncached prompt tokens."""
    by: dict[str, Any] = {}
    for model in ("small", "big"):
        mine = [cost for cost in costs if cost["to"] == model and cost["latency_s"] is not None]
        if mine:
            by[model] = {"count": len(mine), "median_latency_s": round(statistics.median(c["latency_s"] for c in mine), 4),
                         "median_uncached": statistics.median(c["uncached_prompt_tokens"] for c in mine)}
    return by


def same_run_ideal(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ideal from this run's own small-only and big-only traces of the same length: each model's
    seconds per token at the context lengths the trace really reaches (a single-stream decode rate at
    a short context flatters neither and varies run to run: 425-557 tok/s for the small model)."""
    for row in rows:
        per_token = {}
        for model, mode in (("small", "small-only"), ("big", "big-only")):
            alone = next((r for r in rows if r["length"] == row["length"] and r["mode"] == mode and not r["error"]), None)
            if alone:
                per_token[model] = alone["wall_s"] / alone["tokens"][model]
        if len(per_token) == 2:
            ideal = sum(row["tokens"][model] * per_token[model] for model in ("small", "big"))
            row["ideal_same_run_s"] = round(ideal, 3)
            row["vs_ideal_same_run"] = round(row["wall_s"] / ideal, 3)
    return rows


def session_handoffs(out: Path, roles: list[str]) -> dict[str, Any]:
    """Could a warm handoff cost a few decode steps? A new request pays per-request costs that grow
    with the context it resends (its prefix cached or not); vLLM's streaming-input requests
    (`AsyncLLM.generate` given an async generator of `StreamingInput`) keep one request alive and
    take only the new tokens. In-process engines, one model at a time, no HTTP: the floor either
    way. Per context: a decode step, time to the first token of a new request that brings 64 new
    tokens after the cached context, and of 1, 8 or 64 tokens appended to a live request (one new
    token can run as a decode step, with its CUDA graph)."""
    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.engine.protocol import StreamingInput
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    def params(tokens: int) -> Any:
        return SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True, output_kind=RequestOutputKind.DELTA)

    async def measure(model: str, memory: float) -> list[dict[str, Any]]:
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model, enable_prefix_caching=True, max_model_len=20480,
                                                           gpu_memory_utilization=memory, dtype="bfloat16"))

        async def first_token(prompt: list[int], tokens: int = 2) -> tuple[float, float, int]:
            started, first, count = time.perf_counter(), 0.0, 0
            async for output in engine.generate(TokensPrompt(prompt_token_ids=prompt), params(tokens), os.urandom(8).hex()):
                if not first and output.outputs[0].token_ids:
                    first = time.perf_counter() - started
                count += len(output.outputs[0].token_ids)
            return first, time.perf_counter() - started, count

        rows = []
        try:
            for length in CONTEXTS:
                base = _context(length, length)
                await first_token(base, 1)
                first, total, count = await first_token(base + _context(8, 1), 65)
                new = statistics.median([(await first_token(base + _context(CHUNK, 10 + i)))[0] for i in range(3)])
                inputs: asyncio.Queue[Any] = asyncio.Queue()

                live = engine.generate(_drain(inputs), params(2), os.urandom(8).hex()).__aiter__()
                appended: dict[int, list[float]] = {size: [] for size in APPENDED}
                # the context first, then three handoffs of each size (a one-token input can run as a decode step)
                for index, size in enumerate([0] + [size for size in APPENDED for _ in range(3)]):
                    prompt = base if not size else _context(size, 20 + index)
                    started = time.perf_counter()
                    await inputs.put(StreamingInput(prompt=TokensPrompt(prompt_token_ids=prompt), sampling_params=params(2)))
                    got, seen = 0, 0.0
                    while got < 2:
                        output = await live.__anext__()
                        if not seen and output.outputs[0].token_ids:
                            seen = time.perf_counter() - started
                        got += len(output.outputs[0].token_ids)
                    if size:
                        appended[size].append(round(seen, 4))
                await inputs.put(None)
                async for _ in live:  # let the live request end before the next context
                    pass
                rows.append({"model": Path(model).name, "context": length,
                             "decode_step_s": round((total - first) / (count - 1), 5), "new_request_s": round(new, 4),
                             "live_request_append_s": appended[CHUNK],
                             "live_append_by_tokens_s": {str(size): appended[size] for size in APPENDED}})
                print(json.dumps(rows[-1]), flush=True)
                for sink in sinks:  # as they come: a call cut short keeps them
                    with sink.open("a") as rows_file:
                        rows_file.write(json.dumps(rows[-1]) + "\n")
        finally:
            engine.shutdown()
        return rows

    sinks = [out / "session-rows.jsonl", *([Path(os.environ["OUT"]) / "session-rows.jsonl"] if os.environ.get("OUT") else [])]
    memory = {"small": 0.08, "big": 0.25}
    return {"new_tokens": CHUNK, **{role: asyncio.run(measure(str(root() / role), memory[role])) for role in roles}}


async def _drain(queue: asyncio.Queue[Any]) -> Any:
    """The items put on `queue`, until None."""
    while (item := await queue.get()) is not None:
        yield item


def lifecycle(out: Path) -> dict[str, Any]:
    from splitcli import gpus

    def used() -> dict[str, Any]:
        return {"used_mib": round(gpus.memory_used_mib(0)),
                "processes": [{"pid": p.pid, "mib": round(p.used_mib), "command": p.command[:50]} for p in gpus.processes([0])]}

    report: dict[str, Any] = {"before": used()}
    # `stop` every server: API servers, engine cores and workers end, and their memory is freed.
    report["stop_all"] = cli("stop", "--all")
    time.sleep(1)
    report["after_stop"] = used()
    foreign = subprocess.Popen([sys.executable, "-c", "import torch, time; x = torch.ones(2**29, device='cuda'); "
                                "print('ok', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    foreign.stdout.readline() if foreign.stdout else None
    report["with_foreign"] = used()
    report["kill_gpus_default"] = cli("kill-gpus", "--json")  # ends our servers, spares the foreign process
    report["foreign_alive_after_default"] = foreign.poll() is None
    report["after_default"] = used()
    report["bad_gpu"] = cli("kill-gpus", "--gpus", "7")
    report["kill_gpus_all"] = cli("kill-gpus", "--all", "--yes", "--json")
    time.sleep(1)
    report["foreign_alive_after_all"] = foreign.poll() is None
    report["after_all"] = used()
    return report


def vocab_check(out: Path) -> dict[str, Any]:
    """Tiny models of the real vocabulary sizes: a spec server with the 151936-row draft for the
    152064-row target, then with the draft padded by `splitreason pad-vocab` (eager: only the start matters)."""
    results = {}
    for label, draft in (("unpadded", "draft-151936"), ("padded", "draft-152064")):
        path = out / f"vocab-{label}.yaml"
        path.write_text(f"""small: {{model: {root() / draft}, port: 8331, gpus: [0], gpu_memory: 0.05, max_model_len: 4096,
        dtype: bfloat16, extra_args: [--enforce-eager]}}
big: {{model: {root() / 'target-152064'}, port: 8332, gpus: [0], gpu_memory: 0.05, max_model_len: 4096,
      dtype: bfloat16, extra_args: [--enforce-eager],
      speculative: {{method: draft_model, num_speculative_tokens: 3, port: 8333}}}}
""")
        started = cli("serve", "--profile", str(path), "--only", "spec", "--detach", timeout=600)
        results[label] = {"code": started["code"], "seconds": started["seconds"],
                          "error": started["err"].strip().splitlines()[-3:] if started["code"] else None}
        cli("stop", f"vocab-{label}-spec")
    return results


def main() -> None:
    out, phase = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    profile_file(out)
    os.environ.setdefault("SPLITREASON_HOME", str(Path.home() / ".cache" / "splitreason"))
    try:
        card = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        card = "no GPU (a dry run)"
    import vllm

    header = {"card": card, "vllm": vllm.__version__, "cuda_graphs": True, "pair": PAIR, "phase": phase,
              "date": time.strftime("%F")}
    if phase == "models":
        result = models(out)
    elif phase == "serve":
        result = serve(out)
    elif phase == "probe":  # `probe small`: only the small server is up (the big chunk's decode not timed)
        result = asyncio.run(probe_costs(with_big=sys.argv[3:] != ["small"]))
    elif phase == "route-cases":
        small = SERVERS["small"].split("|")
        result = {"cases": asyncio.run(route_cases(small[1], small[0]))}
    elif phase == "decode":
        result = asyncio.run(decode_rates())
    elif phase == "handoff":
        result = asyncio.run(handoffs())
    elif phase == "e2e":  # e2e [LENGTH...] [MODE,MODE,...]: some modes only (the ideal needs small-only and big-only)
        lengths = [int(arg) for arg in sys.argv[3:] if arg.isdigit()] or [4096, 16384]
        chosen = [arg for arg in sys.argv[3:] if not arg.isdigit()]
        result = e2e(out, lengths, *([tuple(chosen[0].split(","))] if chosen else []))
    elif phase == "e2e-spec":
        started = cli("serve", "--profile", str(out / "gpu-pair.yaml"), "--only", "spec", "--detach")
        result = {"serve_spec": started, **e2e(out, [int(arg) for arg in sys.argv[3:]] or [2048], ("spec-decoding",),
                                                "e2e-spec")}
    elif phase == "throughput":  # throughput [C...] [MODE,MODE,...]: C samples in flight, 4096 tokens each
        levels = [int(arg) for arg in sys.argv[3:] if arg.isdigit()] or [1, 8, 32, 64]
        chosen = [arg for arg in sys.argv[3:] if not arg.isdigit()]
        result = throughput(out, levels, LENGTH, tuple(chosen[0].split(",")) if chosen else THROUGHPUT_MODES)
    elif phase == "eval-throughput":  # eval-throughput [C...] MODE,MODE: through `splitreason eval` itself
        levels = [int(arg) for arg in sys.argv[3:] if arg.isdigit()] or [64]
        chosen = [arg for arg in sys.argv[3:] if not arg.isdigit()]
        result = eval_throughput(out, levels, tuple(chosen[0].split(",")) if chosen else THROUGHPUT_MODES, LENGTH)
    elif phase == "session":
        result = session_handoffs(out, sys.argv[3:] or ["small", "big"])
    elif phase == "lifecycle":
        result = lifecycle(out)
    elif phase == "vocab":
        result = vocab_check(out)
    else:
        raise SystemExit(f"unknown phase {phase}")
    text = json.dumps({**header, **result}, indent=2) + "\n"
    name = "-".join([phase, *(arg for arg in sys.argv[3:] if "," not in arg)])  # e2e-4096.json, e2e-16384.json
    (out / f"{name}.json").write_text(text)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / f"{name}.json").write_text(text)
    print(json.dumps({k: v for k, v in result.items() if k not in ("steps",)}, default=str)[:3000])


if __name__ == "__main__":
    main()
