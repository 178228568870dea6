"""A Session: both models working on one question, behind the one door the modes use.

It owns what the modes should not have to think about: each model's context (`contexts.py`),
handoffs and warm-ups (`handoffs.py`), probing the small model for the end of a big segment
(`probing.py`), the token budget, drafting, keeping part of a draft, and recording into the Trace.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterable
from typing import Any

from splitcli.contexts import Contexts
from splitcli.drafting import Drafter
from splitcli.engine import Completion, EngineClient, Prompt
from splitcli.engine_connection import check_replicas
from splitcli.handoffs import LiveDraft, LiveRequests, Warmer
from splitcli.probing import CloseProbe, Prober
from splitcli.profiles import Profile, PromptConfig, Sampling, ServerKey
from splitcli.trace import THINK_END, Model, Segment, Trace, strip_tags


class Session:
    def __init__(self, profile: Profile, trace: Trace, servers: dict[Model, ServerKey],
                 clients: dict[Model, EngineClient], stream: bool = True, sampling: Sampling | None = None) -> None:
        roles = tuple(servers)
        self.profile = profile
        self.trace = trace
        self.roles = roles
        self.stream = stream
        self.sampling = sampling or profile.sampling
        self.tags: PromptConfig = profile.prompt
        self.servers = servers
        trace.session_id = trace.session_id or uuid.uuid4().hex[:16]
        self.clients: dict[Model, EngineClient] = {}  # the caller's pools, recording into this trace, one replica each
        for role in roles:
            # Replica pairs: the big replica with the small one's index (co-located: same node, same index).
            pair = self.clients["small"].replica if profile.replica_pairs and role == "big" and "small" in self.clients else None
            # The big model's segments of sessions that hand off start in waves under load (gathering.py).
            self.clients[role] = clients[role].bound(clock=trace.now, record=trace.calls.append,
                                                     session=trace.session_id, replica=pair,
                                                     gathers=role == "big" and "small" in roles)
        self.contexts = Contexts(roles, self.clients, self.tags)
        self._prefix: dict[Model, tuple[list[int], str]] = {}  # what a role's next segment starts with
        self._background: set[asyncio.Task[Any]] = set()
        self._warmer = Warmer(self.contexts, 0, None, self.in_background)
        self._drafter = Drafter(self.contexts, trace, self.sampling, stream, self._warmer)
        self._prober = Prober(self.contexts, self.tags.close_tag) if "small" in roles else None

    def use(self, *, warm_every: int = 0, live_handoff: bool = False, probe_route: bool = True) -> None:
        """How this session hands off and probes (a mode's knobs, set in its `configure`): warm-ups of
        the idle model every `warm_every` tokens of the other's segment; the big model's last warm-up
        kept alive in its engine (`live_handoff`); probes through our route in the small server when
        it has one (exact, the context sent once) or over the OpenAI API."""
        self._warmer.every = warm_every
        self._warmer.live = LiveRequests(self.clients["big"]) if live_handoff and "big" in self.clients else None
        if self._prober is not None:
            self._prober.use_route = probe_route

    @property
    def knobs(self) -> dict[str, Any]:
        """What `use` set."""
        return {"warm_every": self._warmer.every, "live_handoff": self._warmer.live is not None,
                "probe_route": self._prober.use_route if self._prober is not None else False}

    @property
    def open_ids(self) -> list[int]:
        return self.contexts.open_ids

    @property
    def close_ids(self) -> list[int]:
        return self.contexts.close_ids

    async def aclose(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._warmer.live is not None:
            await self._warmer.live.aclose()
        for client in self.clients.values():
            client.release()

    def in_background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `work` alongside; cancelled when the session ends; its failure is not the run's."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # ------------------------------------------------------------ set-up and budget
    async def prepare(self, with_hint: bool) -> None:
        """Check that each model's replica answers (once per command: a dead one is swapped for a live
        one before anything is sent), build each model's prompt and find out whether handoffs can pass
        token ids."""
        paired = self.profile.replica_pairs and set(self.roles) == {"small", "big"}
        groups = [[self.clients["small"], self.clients["big"]]] if paired else [[self.clients[role]] for role in self.roles]
        await asyncio.gather(*(check_replicas(group) for group in groups))  # a pair moves together
        served = await asyncio.gather(*(self.clients[role].describe() for role in self.roles))
        self.trace.served = {role: {**info, "revision": self.profile.spec(self.servers[role]).revision}
                             for role, info in zip(self.roles, served, strict=True)}
        await asyncio.gather(*(self.contexts.build_prompt(role, self.trace, with_hint and role == "small")
                               for role in self.roles))
        self.trace.prompt_tokens = self.contexts.check_fit(self.sampling.max_tokens)
        await self.contexts.learn_tokenizers()
        self.trace.handoff = "token_ids" if self.contexts.shared_tokenizer else "text"

    def room(self, candidate: int | None = None) -> int:
        """Tokens left in the budget (prompt included, as in the paper's 16384, and at most
        `max_new_tokens` generated); text already queued to start a model's next segment (a closing
        tag) is counted as spent. With `candidate`: the room of one of several candidates drafted side
        by side (branches), which has written that many tokens; the branches' segments are not counted."""
        kept = self.trace.kept_segments
        generated = sum(s.tokens for s in kept if candidate is None or s.branch is None) + (candidate or 0)
        queued = sum(len(ids) for ids, _ in self._prefix.values())
        room = self.sampling.max_tokens - self.contexts[self.roles[0]].prompt_tokens - generated - queued
        if self.sampling.max_new_tokens is not None:
            room = min(room, self.sampling.max_new_tokens - generated - queued)
        return room

    # ------------------------------------------------------------ contexts and handoff
    def commit(self, role: Model, ids: list[int], text: str) -> None:
        """Add text a model wrote to its own context and queue it for the other model's."""
        self.contexts.commit(role, ids, text)

    async def context(self, role: Model) -> list[int]:
        """The role's full context as its token ids, after taking in what the other model wrote."""
        return await self.contexts.context(role)

    def rewind(self, role: Model) -> None:
        """Back to the role's prompt: what was written is forgotten (a full rewrite replaces it)."""
        self.contexts.rewind(role)

    async def hand_back(self, segment: Segment, reason: str, lead: str = "") -> bool:
        """End a big segment and queue the closing tag (after `lead`, whitespace the small model
        writes first) to start the small model's next segment. Returns True when the budget has no
        room for the tag: then the trace ends here."""
        ids = list(self.close_ids) if not lead else await self.clients["small"].tokenize(lead + self.tags.close_tag)
        if len(ids) > self.room():
            self.close(segment, "length")
            return True
        self.close(segment, reason)
        self._prefix["small"] = (ids, lead + self.tags.close_tag)
        return False

    async def queue_text(self, role: Model, text: str) -> None:
        """Text the role's next segment starts with (e.g. "Wait" between thinking rounds)."""
        ids, queued = self._prefix.get(role, ([], ""))
        self._prefix[role] = (ids + await self.clients[role].tokenize(text), queued + text)

    # ------------------------------------------------------------ generation
    async def open(self, role: Model, extend: bool = False) -> Segment:
        last = self.trace.segments[-1] if self.trace.segments else None
        if extend and last is not None and last.model == role:
            return last
        segment = self.trace.open_segment(role)
        segment.waited = await self.clients[role].gather()
        if role in self._prefix:
            ids, text = self._prefix.pop(role)
            segment.token_ids += ids
            segment.text += text
            self.commit(role, ids, text)
        return segment

    def close(self, segment: Segment, finish_reason: str | None) -> None:
        self.trace.close_segment(segment, finish_reason)

    async def draft(self, role: Model, segment: Segment, max_tokens: int, stop: list[str] | None = None,
                    temperature: float | None = None, min_tokens: int = 0) -> Completion:
        """Generate into `segment` (shown live) without committing it to any context yet; at least
        `min_tokens` before a stop string may end it."""
        return await self._drafter.draft(role, segment, max_tokens, stop, temperature, min_tokens)

    async def start_draft(self, role: Model, segment: Segment, max_tokens: int,
                          stop: list[str] | None = None) -> LiveDraft:
        """Start streaming into `segment` in the background; the caller reads the live completion,
        cancels it, then keeps part of it (`keep`). Nothing is committed meanwhile."""
        return await self._drafter.start_draft(role, segment, max_tokens, stop)

    def settle(self, segment: Segment, draft: Completion, tokens: int) -> None:
        """The draft's first `tokens` are final (no cut can fall inside them): shown as final now."""
        self._drafter.settle(segment, draft, tokens)

    async def drop_stop_string(self, role: Model, result: Completion, segment: Segment | None = None) -> None:
        """Take the stop string a draft ended on off its end (and off the segment showing it)."""
        await self._drafter.drop_stop_string(role, result, segment)

    async def keep(self, role: Model, segment: Segment, result: Completion, n_tokens: int,
                   chars: int | None = None) -> None:
        """Keep the first `n_tokens` of a draft (or its text up to `chars`) and commit them; drop the rest."""
        await self._drafter.keep(role, segment, result, n_tokens, chars)

    async def write(self, role: Model, max_tokens: int, stop: list[str] | None = None,
                    extend: bool = False, min_tokens: int = 0) -> tuple[Segment, Completion]:
        """Generate, keep everything, and close the segment: the common case."""
        segment = await self.open(role, extend=extend)
        result = await self.draft(role, segment, max_tokens, stop, min_tokens=min_tokens)
        self.commit(role, result.token_ids, result.text)
        self.close(segment, result.ended_by)
        return segment, result

    async def probe_close(self, draft: Completion, start: int, stop: int, probe_tokens: int,
                          stride: int = 1) -> list[CloseProbe]:
        """Whether the small model would close the tag after each prefix draft[:i], start < i <= stop,
        of big-model text not yet committed to its context (see `probing.Prober`). Kept behind this one
        method so that the modes never change with how it is asked."""
        assert self._prober is not None, "probing needs the small model"
        return await self._prober.probe_close(draft, start, stop, probe_tokens, stride)

    # ------------------------------------------------------------ steps and candidates (training-free modes)
    async def draft_segment(self, role: Model, max_tokens: int, stop: list[str] | None = None) -> tuple[Segment, Completion]:
        """A new segment drafted by `role`, not committed: `keep_step` or `discard` it."""
        segment = await self.open(role)
        return segment, await self.draft(role, segment, max_tokens, stop)

    async def step(self, role: Model, max_tokens: int, delimiter: str) -> tuple[Segment, Completion]:
        """One reasoning step by `role`: up to `delimiter` (kept, as it joins steps) or the end of the
        thinking, at most `max_tokens`. Drafted, not committed: `keep_step` or `discard`."""
        return await self.draft_segment(role, max_tokens, [delimiter] if delimiter == THINK_END else [delimiter, THINK_END])

    async def keep_step(self, role: Model, segment: Segment, result: Completion) -> None:
        await self.keep(role, segment, result, len(result.token_ids))
        self.close(segment, result.ended_by)

    def discard(self, segment: Segment, result: Completion) -> None:
        """Throw a drafted step away: it stays in the trace, not kept (shown dimmed), its tokens spent."""
        segment.kept = False
        self.close(segment, result.ended_by)
        self.trace.emit("update", segment)

    async def next_token_logprobs(self, role: Model, top: int = 20) -> dict[str, float]:
        """The `top` most likely next tokens of `role` after its context, with their log-probs."""
        prompt = await self.context(role)
        (result,) = await self.clients[role].complete([prompt], max_tokens=1, temperature=0.0, logprobs=top,
                                                      kind="score", token_ids=False)
        return result.top_logprobs[0] if result.top_logprobs else {}

    async def judge(self, role: Model, instruction: str, answer_start: str, draft: str = "",
                    top: int = 10) -> dict[str, float]:
        """`role` reads the question and the thinking so far (and `draft`, a step not yet kept), then
        `instruction` as the next user turn, and begins its reply with `answer_start`: its `top` most
        likely next tokens, with log-probs (SpecReason's judge reads a score from them)."""
        await self.context(role)
        seen = strip_tags(draft, self.tags.open_tag, self.tags.close_tag) if role == "big" else draft
        messages = [*self.trace.conversation, {"role": "user", "content": self.tags.user_message(self.trace.question, False)},
                    {"role": "assistant", "content": self.tags.assistant_prefix + self.contexts.thinking(role) + seen},
                    {"role": "user", "content": instruction}, {"role": "assistant", "content": answer_start}]
        ids, _ = await self.clients[role].tokenize_chat(messages, continue_final=True)
        limit = self.contexts[role].max_model_len
        if limit and len(ids) >= limit:
            return {}
        (result,) = await self.clients[role].complete([ids], max_tokens=1, temperature=0.0, logprobs=top,
                                                      kind="score", token_ids=False)
        return result.top_logprobs[0] if result.top_logprobs else {}

    def with_pieces(self, role: Model, base: list[int], pieces: Iterable[tuple[Model, list[int], str]]) -> Prompt:
        """`base` (the role's context ids) followed by what candidates wrote: ids when the tokenizers
        match, else the role's context text and the pieces' text, tokenised by the server."""
        pieces = list(pieces)
        if self.contexts.shared_tokenizer:
            return base + [token for _, ids, _ in pieces for token in ids]
        return self.contexts[role].text + "".join(text for _, _, text in pieces)

    async def chat_prompt(self, role: Model, messages: list[dict[str, str]]) -> list[int]:
        """A fresh prompt for `role` from its chat template (not the question's context)."""
        ids, _ = await self.clients[role].tokenize_chat(messages)
        return ids

    async def sample(self, role: Model, prompts: list[Prompt], max_tokens: int, *, n: int = 1, seed: int | None = None,
                     stop: list[str] | None = None) -> list[Completion]:
        """Candidates, drafted side by side in one batched request with this run's sampling: `n` per
        prompt (n at a time only when sampled; greedy gives one), prompt by prompt."""
        sampled = self.sampling.temperature > 0
        return await self.clients[role].complete(prompts, max_tokens=max_tokens, temperature=self.sampling.temperature,
                                                 top_p=self.sampling.top_p, seed=seed, stop=stop,
                                                 n=n if sampled else 1)

    async def score(self, role: Model, prompts: list[Prompt], max_tokens: int) -> list[Completion]:
        """Greedy continuations of `prompts` with their tokens' log-probs, in one batched request."""
        return await self.clients[role].complete(prompts, max_tokens=max_tokens, temperature=0.0, logprobs=1,
                                                 kind="score")

    def record(self, role: Model, completion: Completion, branch: int, finish_reason: str | None = None) -> Segment:
        """A candidate's completion as a closed segment of the trace, on `branch`; committed to no context."""
        segment = self.trace.open_segment(role)
        segment.branch = branch
        segment.text, segment.token_ids = completion.text, list(completion.token_ids)
        self.close(segment, finish_reason or completion.ended_by)
        return segment

    def keep_only(self, candidates: Iterable[Segment], kept: Iterable[Segment]) -> None:
        """Of the candidates' segments, only `kept` stay kept; the others are shown dimmed, spent."""
        survivors = {id(segment) for segment in kept}
        for segment in candidates:
            segment.kept = id(segment) in survivors
            self.trace.emit("update", segment)

    async def metrics(self, role: Model) -> dict[str, float]:
        """The role's server's Prometheus counters (vLLM's `/metrics`)."""
        return await self.clients[role].metrics()
