"""Pairwise judge behind an OpenAI-compatible chat-completions server (vLLM, llama.cpp server, TGI, OpenAI).

The judge of pairwise_llm (same prompt, both orders, "A"/"B" parsing, order-dependent answers = 0.5 tie) with the
model served separately, so that it scales on its own (docs/architecture.md). Standard library only (urllib).

Params: base_url (e.g. http://localhost:8000/v1), model, api_key_env (the NAME of the environment variable holding
the key; without it no key is sent, so a recipe cannot ship $OPENAI_API_KEY to a server it names), timeout (seconds
per socket operation), deadline (seconds for a whole request, default 2 x timeout: a server that trickles its
answer is cut off), max_document_words, max_tokens, concurrency (requests in flight), retries (on timeouts,
connection errors, 429 and 5xx, with backoff). A response over MAX_RESPONSE_BYTES is a failure.

A request that still fails, or an answer that is neither "A" nor "B", makes that comparison None: a failure
that the label store records as NULL (with the reason in its raw field) and asks again on a rerun.

The key: read from the environment when the judge is built, kept in memory and sent only in the Authorization
header. A literal `api_key` in a recipe is refused (recipes are saved to the run directory as config.yaml).
The judge's name (part of every label key and log line) holds the model name only; error texts and raw answers
are scrubbed of the key (and of any 6+ character piece of it, as a server may echo a cut header) before they are
shortened, and before they reach run.log or labels.sqlite. Redirects are not followed (urllib would
resend the Authorization header to wherever a redirect points).
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from reward_sources.pairwise_llm import combine, parse_choice, prompt_parts
from reward_sources.registry import check_no_secrets
from reward_sources.rouge import check_spec

log = logging.getLogger(__name__)
OPTIONS = {"base_url", "model", "api_key_env", "timeout", "deadline", "max_document_words", "max_tokens",
           "concurrency", "retries"}
MAX_RESPONSE_BYTES = 1 << 20  # an answer is a few tokens; more is a misbehaving server, not a judgement
_BEARER = re.compile(r"(bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)  # RFC 6750 token68
_warned_plain_http: set[str] = set()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError for the 3xx


_current = threading.local()  # the request this thread is sending: its socket and deadline, for the watchdog


def _cut(slot: dict) -> None:
    """Shut the request's socket down: a read blocked on it returns at once. The socket, not the connection, is
    kept: http.client drops its reference to the socket once the headers are read."""
    slot["expired"].set()
    if slot.get("sock") is not None:
        try:
            slot["sock"].shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _tracking(base):
    class Handler(base):
        def do_open(self, http_class, req, **kw):
            slot = _current.slot

            def connection(*args, **kwargs):
                conn = http_class(*args, **kwargs)
                connect = conn.connect

                def recorded():
                    connect()
                    slot["sock"] = conn.sock
                    if slot["expired"].is_set():  # the deadline passed while connecting
                        _cut(slot)

                conn.connect = recorded
                return conn

            return super().do_open(connection, req, **kw)

    return Handler


_OPENER = urllib.request.build_opener(_NoRedirect, _tracking(urllib.request.HTTPHandler),
                                      _tracking(urllib.request.HTTPSHandler))


def scrub(text, key: str | None, limit: int = 300) -> str:
    """One line of at most `limit` characters with no piece of the key: scrubbed first, then cut, so no cut can leave
    a prefix of it behind."""
    text = _BEARER.sub(r"\1***", " ".join(str(text).split()))
    if key:
        head, out, i = key[:6], [], 0
        while (j := text.find(head, i)) >= 0:
            n = len(head)
            while n < len(key) and j + n < len(text) and text[j + n] == key[n]:
                n += 1
            out.append(text[i:j] + "***")
            i = j + n
        text = "".join(out) + text[i:]
        # the text itself may have been cut (by the server, or by the read below) inside the key
        cut = next((n for n in range(min(len(key), len(text)), 2, -1) if text.endswith(key[:n])), 0)
        text = text[: len(text) - cut] + ("***" if cut else "")
    return text[:limit]


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
        self.deadline = _number(params, "deadline", 2 * self.timeout, float, 0.001)
        self.max_words = _number(params, "max_document_words", 400, int, 1)
        self.max_tokens = _number(params, "max_tokens", 8, int, 1)
        self.concurrency = _number(params, "concurrency", 8, int, 1)
        self.retries = _number(params, "retries", 2, int, 0)
        env = params.get("api_key_env")
        self._key = (os.environ.get(env) or None) if env else None
        if env and self._key is None:
            raise ValueError(f"pairwise_http: the environment variable {env} (api_key_env) is not set or empty")
        plain = self._key and url.scheme == "http" and url.hostname not in ("localhost", "127.0.0.1", "::1")
        if plain and url.hostname not in _warned_plain_http:  # once: the CLI builds the judge to check it, then uses it
            _warned_plain_http.add(url.hostname)
            log.warning("pairwise_http: the API key goes to %s over plain http (unencrypted)", url.hostname)
        self.name = f"pairwise_http:{self.model}"
        self.last_raw: list[dict] = []

    def __repr__(self) -> str:
        return f"HTTPPairwiseJudge({self.name!r}, {self.url!r})"

    def _scrub(self, text) -> str:
        return scrub(text, self._key)

    def _post(self, prompt: str, seed: int) -> str:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": self.max_tokens, "seed": seed}
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        # socket timeouts bound each read, not the request: past the deadline its socket is shut down
        _current.slot = slot = {"expired": threading.Event()}
        expired = slot["expired"]
        watchdog = threading.Timer(self.deadline, _cut, (slot,))
        watchdog.daemon = True
        watchdog.start()
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                raw = resp.read(MAX_RESPONSE_BYTES + 1)
            if len(raw) > MAX_RESPONSE_BYTES:
                raise _Failed(f"response larger than {MAX_RESPONSE_BYTES} bytes", False)
            data = json.loads(raw)
        except urllib.error.HTTPError as e:
            detail = e.read(4096).decode("utf-8", "replace") if e.fp else ""  # scrubbed whole, then cut to 300
            raise _Failed(f"HTTP {e.code} {e.reason}: {detail}", e.code == 429 or e.code >= 500) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            if expired.is_set():
                raise _Failed(f"no complete answer within the deadline of {self.deadline:g}s", True) from None
            raise _Failed(f"{type(e).__name__}: {getattr(e, 'reason', e)}", True) from None
        except ValueError as e:  # json
            if expired.is_set():
                raise _Failed(f"no complete answer within the deadline of {self.deadline:g}s", True) from None
            raise _Failed(f"malformed response: {e}", False) from None
        finally:
            watchdog.cancel()
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


def check_build_judge(params: dict) -> None:
    """Every option checked, the key's variable included; nothing is sent (the CLI runs this before any stage)."""
    HTTPPairwiseJudge(params)


def build_judge(params: dict, ctx=None):
    return HTTPPairwiseJudge(params, ctx)
