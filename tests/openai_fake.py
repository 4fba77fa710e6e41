"""What the fake OpenAI-compatible endpoints of the tests answer: a chat completion, sent as JSON."""

from __future__ import annotations

import json


def completion(model: str, content: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def send_json(handler, status: int, obj) -> None:
    """Answer ``handler``'s request (a ``BaseHTTPRequestHandler``) with ``status`` and ``obj`` as JSON."""
    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
