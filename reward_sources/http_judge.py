"""Pairwise judge behind an OpenAI-compatible chat-completions server (vLLM, llama.cpp server, TGI, OpenAI).

The judge of pairwise_llm (same prompt, both orders, "A"/"B" parsing, order-dependent answers = 0.5 tie) with the
model served separately, so that it scales on its own (docs/architecture.md). Standard library only (urllib).

Params: base_url (e.g. http://localhost:8000/v1), model, api_key_env (the NAME of the environment variable holding
the key; default OPENAI_API_KEY, no key sent when that default is unset), timeout (seconds per request),
max_document_words, max_tokens, concurrency (requests in flight), retries (on timeouts, connection errors, 429
and 5xx, with backoff).

A request that still fails, or an answer that is neither "A" nor "B", makes that comparison None: a failure
that the label store records as NULL (with the reason in its raw field) and asks again on a rerun.

The key: read from the environment when the judge is built, kept in memory and sent only in the Authorization
header. A literal `api_key` in a recipe is refused (recipes are saved to the run directory as config.yaml).
The judge's name (part of every label key and log line) holds the model name only; error texts and raw answers
are scrubbed of the key before they reach run.log or labels.sqlite. Redirects are not followed (urllib would
resend the Authorization header to wherever a redirect points).
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from reward_sources.pairwise_llm import combine, parse_choice, prompt_parts
from reward_sources.registry import check_no_secrets
from reward_sources.rouge import check_spec

log = logging.getLogger(__name__)
OPTIONS = {"base_url", "model", "api_key_env", "timeout", "max_document_words", "max_tokens", "concurrency", "retries"}
DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError for the 3xx


_OPENER = urllib.request.build_opener(_NoRedirect)


class _Failed(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


def _number(params: dict, key: str, default, cast, low):
    value = params.get(key, default)
    try:
        ok = not isinstance(value, bool) and cast(value) == value and value >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"pairwise_http: {key} must be a {cast.__name__} >= {low}, got {value!r}")
    return cast(value)


class HTTPPairwiseJudge:
    kind = "pairwise"

    def __init__(self, params: dict, ctx=None):
        check_no_secrets("pairwise_http", params)  # refuses a literal api_key with a one-line hint
        check_spec(params, OPTIONS, "pairwise_http")
        for key in ("base_url", "model"):
            if not isinstance(params.get(key), str) or not params[key].strip():
                raise ValueError(f"pairwise_http: '{key}' is required (e.g. base_url: http://localhost:8000/v1, "
                                 "model: the served model's name)")
        url = urllib.parse.urlsplit(params["base_url"].strip())
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"pairwise_http: base_url must be an http(s) URL such as http://localhost:8000/v1, "
                             f"got '{url.scheme}://{url.hostname or ''}...'")
        self.url = urllib.parse.urlunsplit((url.scheme, url.netloc, url.path.rstrip("/") + "/chat/completions", "", ""))
        self.model = params["model"]
        self.timeout = _number(params, "timeout", 60.0, float, 0.001)
        self.max_words = _number(params, "max_document_words", 400, int, 1)
        self.max_tokens = _number(params, "max_tokens", 8, int, 1)
        self.concurrency = _number(params, "concurrency", 8, int, 1)
        self.retries = _number(params, "retries", 2, int, 0)
        env = params.get("api_key_env", DEFAULT_KEY_ENV)
        self._key = os.environ.get(env) or None
        if self._key is None and "api_key_env" in params:
            raise ValueError(f"pairwise_http: the environment variable {env} (api_key_env) is not set or empty")
        if self._key and url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1"):
            log.warning("pairwise_http: the API key goes to %s over plain http (unencrypted)", url.hostname)
        self.name = f"pairwise_http:{self.model}"
        self.last_raw: list[dict] = []

    def __repr__(self) -> str:
        return f"HTTPPairwiseJudge({self.name!r}, {self.url!r})"

    def _scrub(self, text: str) -> str:
        text = " ".join(str(text).split())[:300]
        return text.replace(self._key, "***") if self._key else text

    def _post(self, prompt: str, seed: int) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": self.max_tokens, "seed": seed}
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace") if e.fp else ""
            raise _Failed(f"HTTP {e.code} {e.reason}: {detail}", e.code == 429 or e.code >= 500) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise _Failed(f"{type(e).__name__}: {getattr(e, 'reason', e)}", True) from None
        except ValueError as e:  # json
            raise _Failed(f"malformed response: {e}", False) from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Failed(f"no choices[0].message.content in the response: {json.dumps(data)[:200]}", False) from None
        return content if isinstance(content, str) else ""

    def _ask(self, prompt: str, seed: int) -> tuple[str | None, str | None]:
        """(answer, None) or (None, reason); the reason is scrubbed of the key."""
        for attempt in range(self.retries + 1):
            try:
                return self._scrub(self._post(prompt, seed)), None
            except _Failed as e:
                if not e.retry or attempt == self.retries:
                    return None, self._scrub(str(e))
                time.sleep(min(0.5 * 2 ** attempt, 8.0))
        raise AssertionError("unreachable")

    def compare(self, rows, a, b, seed=0) -> list[float | None]:
        """1 = a better, 0 = b better, 0.5 = order-dependent answers, None = a failed request or unparseable answer."""
        if not (len(rows) == len(a) == len(b)):
            raise ValueError(f"pairwise_http: {len(rows)} rows, {len(a)} a-responses, {len(b)} b-responses")
        n = len(rows)
        prompts = ["".join(prompt_parts(r["document"], x, y, self.max_words)) for r, x, y in zip(rows, a, b)]
        prompts += ["".join(prompt_parts(r["document"], y, x, self.max_words)) for r, x, y in zip(rows, a, b)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(len(prompts), 1))) as pool:
            results = list(pool.map(lambda p: self._ask(p, seed), prompts))
        errors = [err for _, err in results if err]
        if errors:
            log.warning("pairwise_http %s: %d of %d requests failed (first: %s)", self.model, len(errors),
                        len(prompts), errors[0])
        self.last_raw = []
        for i, r in enumerate(rows):
            raw = {"id": r.get("id"), "ab": results[i][0], "ba": results[n + i][0]}
            err = [e for e in (results[i][1], results[n + i][1]) if e]
            if err:
                raw["error"] = err[0]
            self.last_raw.append(raw)
        return [combine(parse_choice(results[i][0]), parse_choice(results[n + i][0])) for i in range(n)]


def build_judge(params: dict, ctx=None):
    return HTTPPairwiseJudge(params, ctx)
