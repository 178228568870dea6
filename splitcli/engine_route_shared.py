"""What the continuations route and the live route share inside vLLM's API server: the text an
incremental detokenizer shows, the model's sampling defaults, and JSON answers over ASGI.

Imports nothing of splitcli but the other engine_route modules (see engine_route).
"""

from __future__ import annotations

import json
from typing import Any

CONTEXT_TOKENS = 6  # prompt tokens decoded before a probe's own, so that its text reads as in context


async def disconnected(receive: Any) -> None:
    """Returns when the client has closed the connection (the request's body is already read)."""
    while (await receive()).get("type") != "http.disconnect":
        pass


async def send_json(send: Any, status: int, answer: dict[str, Any]) -> None:
    """Answer the request with one JSON body."""
    payload = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def text_after(tokenizer: Any, before: list[int], new: list[int], skip_special: bool) -> str:
    """The text `new` adds after `before`: what an incremental detokenizer shows (a leading space
    that only exists after earlier tokens, bytes of a character split across tokens)."""
    # Bytes of a character split across tokens come out with the token that completes it.
    head = tokenizer.decode(before, skip_special_tokens=skip_special).rstrip("\ufffd")
    whole = tokenizer.decode(before + new, skip_special_tokens=skip_special)
    if whole.startswith(head):
        return whole[len(head):]
    return tokenizer.decode(new, skip_special_tokens=skip_special)


def model_config(engine: Any) -> Any:
    """The served model's config, wherever this vLLM's engine client keeps it."""
    return getattr(engine, "model_config", None) or getattr(getattr(engine, "vllm_config", None), "model_config", None)


_read_defaults: list[tuple[Any, dict[str, Any]]] = []  # (the server's model config, its defaults)


def model_defaults(config: Any) -> dict[str, Any]:
    """Sampling defaults from the model's generation_config, which vLLM's OpenAI server applies to
    requests that do not set them. Read once per server: vLLM reads the file again on every call,
    and this is on the path of every probe and every live handoff."""
    if config is None:
        return {}
    if not _read_defaults or _read_defaults[0][0] is not config:
        try:
            defaults = dict(config.get_diff_sampling_param())
        except Exception:  # a vLLM without it: none applied there either
            defaults = {}
        _read_defaults[:] = [(config, defaults)]
    return dict(_read_defaults[0][1])

