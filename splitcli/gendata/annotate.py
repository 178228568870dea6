"""The annotator: any OpenAI-compatible chat API asked to copy out the hardest snippets of a trace.

Requests go through the `openai` client, which retries 429 (honouring Retry-After), 5xx and
timeouts with backoff. A reply with no usable snippets (none between the delimiter lines, or one
that is not in the trace) is asked again at the next temperature; after the last, the trace is
rejected with the reason. The API key is read from the environment (or .env) by name and never
written anywhere.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from splitcli.errors import DataError, UsageError
from splitcli.gendata.align import Match, locate
from splitcli.profiles import SNIPPET_END, SNIPPET_START, AnnotatorSpec, ModelSpec

SNIPPET = re.compile(rf"^\s*{re.escape(SNIPPET_START)}\s*$\n?(.*?)\n?^\s*{re.escape(SNIPPET_END)}\s*$",
                     re.MULTILINE | re.DOTALL)


@dataclass
class Annotation:
    ok: bool
    matches: list[Match] = field(default_factory=list)
    reason: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)  # temperature, snippets, found, error


def parse_snippets(reply: str) -> list[str]:
    """The texts between the delimiter lines, in order; empty ones dropped."""
    return [text.strip() for text in SNIPPET.findall(reply) if text.strip()]


class Annotator:
    """One annotator (one connection pool) for a whole gendata run."""

    def __init__(self, spec: AnnotatorSpec, server: ModelSpec, name: str) -> None:
        from openai import AsyncOpenAI

        self.spec = spec
        self.model = name
        key = "not-needed"  # vLLM servers we launch take no key
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise UsageError(f"the annotator's key is not set: put {spec.api_key_env}=... in the environment or in "
                                 "a .env file in this folder")
        self.base_url = f"{server.urls[0]}/v1"
        self.client = AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=spec.retries, timeout=spec.timeout)
        # vLLM refuses max_tokens over the model's context; a server we launch says what that is.
        self.max_tokens = min(spec.max_tokens, server.max_model_len) if server.max_model_len else spec.max_tokens

    async def aclose(self) -> None:
        await self.client.close()

    async def annotate(self, trace: str, fraction: float, seed: int) -> Annotation:
        """The snippets of `trace` the annotator marks, located in it, trying each temperature."""
        from openai import APIStatusError, OpenAIError

        message = self.spec.request(trace, fraction)
        attempts: list[dict[str, Any]] = []
        reason = "no attempt"
        for number, temperature in enumerate(self.spec.temperatures):
            try:
                reply = await self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": message}], temperature=temperature,
                    max_tokens=self.max_tokens, seed=seed + number)
                text = reply.choices[0].message.content or ""
            except APIStatusError as exc:
                if exc.status_code in (400, 401, 403, 404, 422):  # the same for every trace: stop the run
                    raise _refused(self.base_url, exc, self.spec.api_key_env) from None
                reason = f"the annotator failed after {self.spec.retries} retries (HTTP {exc.status_code})"
                attempts.append({"temperature": temperature, "error": reason})
                return Annotation(False, reason=reason, attempts=attempts)
            except OpenAIError as exc:  # retries are spent: this trace cannot be annotated now
                reason = f"the annotator failed after {self.spec.retries} retries ({type(exc).__name__}: {str(exc)[:160]})"
                attempts.append({"temperature": temperature, "error": reason})
                return Annotation(False, reason=reason, attempts=attempts)
            snippets = parse_snippets(text)
            matches = [locate(snippet, trace) for snippet in snippets]
            missed = [m for m in matches if not m.found]
            attempts.append({"temperature": temperature, "snippets": len(snippets), "found": len(matches) - len(missed)})
            if not snippets:
                reason = f"no snippet between {SNIPPET_START} and {SNIPPET_END} lines"
                continue
            if missed:
                best = max(m.similarity for m in missed)
                reason = (f"{len(missed)} of {len(matches)} snippets are not in the trace "
                          f"(best similarity {best:.2f} < 0.50)")
                continue
            return Annotation(True, matches, attempts=attempts)
        temperatures = ", ".join(str(t) for t in self.spec.temperatures)
        return Annotation(False, reason=f"{reason}, at temperatures {temperatures}", attempts=attempts)


def _refused(url: str, exc: Any, key_env: str | None) -> DataError:
    message = getattr(exc, "message", str(exc))
    if exc.status_code in (401, 403):
        fix = f"check {key_env}" if key_env else "set annotator.api_key_env to the variable holding the key"
    elif exc.status_code == 404:
        fix = "check annotator.model: the endpoint does not serve it"
    else:
        fix = "check the annotator settings in the profile"
    return DataError(f"the annotator at {url} refused the request (HTTP {exc.status_code}: {str(message)[:200]}); {fix}")
