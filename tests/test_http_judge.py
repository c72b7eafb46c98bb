"""The OpenAI-compatible HTTP judge against a local server thread; and that its API key never reaches the disk.

The server plays vLLM's /v1/chat/completions: it checks the Authorization header, reads the two summaries out of
the prompt and answers deterministically ("A" when summary A has more words, else "B"; "A" on equal length, a
position bias that the both-orders combination turns into a 0.5 tie). Texts containing SLOW, BOOM or GARBLE make
it time out, fail with HTTP 500, or answer nonsense; FLAKY fails with 503 the first time a prompt is seen; TRICKLE
sends its answer one byte every 0.3 s (each read within the timeout, the whole far past it), HUGE a 2 MiB answer,
and PAD<n> a 401 whose text puts the received key <n> characters into the error line.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.labels import LabelStore
from reward_sources import build_judge

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-0123456789-SECRET-do-not-log"
KEY_ENV = "TRLHF_TEST_JUDGE_KEY"
TINY = ["data.n_examples=60", "data.eval_size=6", "data.test_size=6", "policy.name=shape:t5-tiny", "sft.steps=2",
        "sft.batch_size=8", "sft.eval_examples=0", "online.iterations=1", "online.prompts_per_iteration=4",
        "online.k=3", "online.max_new_tokens=6", "online.epochs=1", "online.batch_size=4", "eval.n_prompts=4",
        "eval.seeds=[0]", "eval.max_new_tokens=6"]


class Server:
    def __init__(self, key: str = SECRET):
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.seen: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _send(self, code: int, body: dict | str, headers: dict | None = None):
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                outer.paths.append(self.path)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                outer.requests.append({"auth": auth, "body": body})
                if self.path == "/redirect/chat/completions":
                    return self._send(302, {}, {"Location": "/leak"})
                if auth != f"Bearer {key}":  # a careless server that echoes the key it got
                    return self._send(401, {"error": f"invalid api key {auth}"})
                prompt = body["messages"][0]["content"]
                a, b = re.search(r"Summary A: (.*?)\nSummary B: (.*?)\n\nWhich", prompt, re.DOTALL).groups()
                if "TRICKLE" in prompt:
                    data = json.dumps({"choices": [{"message": {"content": "A"}}]}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                        time.sleep(0.3)
                    return None
                if "HUGE" in prompt:
                    return self._send(200, {"choices": [{"message": {"content": "A" + " " * (2 << 20)}}]})
                pad = re.search(r"PAD(\d+)", prompt)
                if pad:  # HTTP 401 Unauthorized: {"error": "<pad>Bearer <key>..." -- the key lands at the cut
                    return self._send(401, {"error": "x" * int(pad.group(1)) + f"{auth} was echoed"})
                if "SLOW" in prompt:
                    time.sleep(4.0)  # far past the test timeout even on a loaded machine
                if "BOOM" in prompt:
                    return self._send(500, {"error": "backend crashed"})
                if "FLAKY" in prompt and prompt not in outer.seen:
                    outer.seen.add(prompt)
                    return self._send(503, {"error": "overloaded"})
                answer = "I cannot decide" if "GARBLE" in prompt else "A" if len(a.split()) >= len(b.split()) else "B"
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    s = Server()
    yield s
    s.close()



def judge(server, **params):
    return build_judge("pairwise_http", {"base_url": server.url, "model": "judge-7b", "api_key_env": KEY_ENV,
                                         "retries": 0, **params})


ROWS = [{"id": "p1", "document": "The council met."}, {"id": "p2", "document": "A bridge opened."},
        {"id": "p3", "document": "Rain fell."}]


def test_answers_in_both_orders_with_the_key_in_the_header(server):
    j = judge(server)
    # p1: a longer -> A in both orders -> 1.0; p2: b longer -> 0.0; p3: equal length -> "A" both times -> tie
    assert j.compare(ROWS, ["one two three", "one", "one two"],
                     ["one", "one two three", "three four"]) == [1.0, 0.0, 0.5]
    assert len(server.requests) == 6 and {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    p1 = [r["body"]["messages"][0]["content"] for r in server.requests if "The council met." in str(r["body"])]
    assert sorted(re.search(r"Summary A: (.*)\nSummary B: (.*)\n", p).groups() for p in p1) == [
        ("one", "one two three"), ("one two three", "one")]  # both orders
    body = server.requests[0]["body"]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("judge-7b", 0, 8)
    assert j.name == "pairwise_http:judge-7b" and SECRET not in repr(j)
    assert j.last_raw[0] == {"id": "p1", "ab": "A", "ba": "B"}


def test_no_key_configured_sends_no_header(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # set, but the recipe did not name it: not sent
    j = build_judge("pairwise_http", {"base_url": server.url, "model": "m", "retries": 0})
    assert j.compare(ROWS[:1], ["a b"], ["a"]) == [None]  # the server wants a key: 401, a failure
    assert server.requests[-1]["auth"] is None


@pytest.mark.parametrize("params, message", [
    ({"api_key": SECRET}, "pairwise_http.api_key: a literal secret in a recipe is refused (recipes are saved to the "
                          "run directory as config.yaml); put it in an environment variable and set api_key_env to the "
                          "variable's name"),
    ({"api_key_env": SECRET}, "pairwise_http.api_key_env must be the NAME of an environment variable (letters, "
                              "digits, _), not the secret itself"),
    ({"api_key_env": "TRLHF_TEST_UNSET_KEY"}, "pairwise_http: the environment variable TRLHF_TEST_UNSET_KEY "
                                              "(api_key_env) is not set or empty"),
    ({"base_url": f"http://user:{SECRET}@127.0.0.1:1/v1"},
     "pairwise_http.base_url: a URL with credentials (user:password@) is refused (recipes are saved to the run "
     "directory); put the key in an environment variable (api_key_env)"),
    ({"base_url": "ftp://127.0.0.1/v1"}, "pairwise_http: base_url must be an http(s) URL such as "
                                         "http://localhost:8000/v1, got 'ftp://127.0.0.1...'"),
    ({"timeout": "soon"}, "pairwise_http: timeout must be a float >= 0.001, got 'soon'"),
    ({"temperature": 0}, "pairwise_http: unknown option 'temperature'; valid: api_key_env, base_url, concurrency, "
                         "deadline, max_document_words, max_tokens, model, name, retries, timeout."),
    ({"base_url": "https://judge.example/v1?api_key=abc123"},
     "pairwise_http.base_url: a URL with a key in its query string is refused (recipes are saved to the run "
     "directory); put the key in an environment variable (api_key_env)"),
    ({"deadline": 0}, "pairwise_http: deadline must be a float >= 0.001, got 0"),
])
def test_bad_params_are_one_line_errors_without_the_secret(params, message, monkeypatch):
    monkeypatch.delenv("TRLHF_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ValueError) as e:
        build_judge("pairwise_http", {"base_url": "http://127.0.0.1:1/v1", "model": "m", **params})
    assert str(e.value) == message


def test_literal_key_in_a_recipe_is_refused_before_anything_is_written(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: k\nrun_dir: {tmp_path / 'run'}\njudge:\n  name: pairwise_http\n  params:\n"
                      f"    base_url: http://127.0.0.1:1/v1\n    model: m\n    api_key: {SECRET}\n")
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: judge.params.api_key: a literal secret in a recipe is refused (recipes are saved to the "
                   "run directory as config.yaml); put it in an environment variable and set api_key_env to the "
                   "variable's name")
    assert not (tmp_path / "run").exists()  # no config.yaml holding the key


def test_timeouts_http_errors_and_garbage_are_null_failures_in_the_store(server, tmp_path, caplog):
    j = judge(server, timeout=1.5)  # generous: a loaded CI machine must still answer the fast requests in time
    store = LabelStore(tmp_path / "labels.sqlite")
    rows = ROWS + [{"id": "p4", "document": "Snow."}]
    a, b = ["good one", "SLOW x", "BOOM y", "GARBLE z"], ["fine", "u", "v", "w"]
    with caplog.at_level(logging.WARNING):
        assert store.pairwise(j, rows, a, b, iteration=1) == [1.0, None, None, None]
    db = sqlite3.connect(tmp_path / "labels.sqlite")
    got = dict(db.execute("SELECT prompt_id, raw FROM labels WHERE answer IS NULL").fetchall())
    assert sorted(got) == ["p2", "p3", "p4"]
    assert "timed out" in json.loads(got["p2"])["error"]
    assert json.loads(got["p3"])["error"] == 'HTTP 500 Internal Server Error: {"error": "backend crashed"}'
    assert json.loads(got["p4"]) == {"id": "p4", "ab": "I cannot decide", "ba": "I cannot decide"}  # unparseable
    assert "4 of 8 requests failed" in caplog.text  # p2 and p3, each in both orders
    # a rerun asks only the failed queries again
    before = len(server.requests)
    assert store.pairwise(j, rows, a, b, iteration=1)[0] == 1.0
    assert len(server.requests) - before == 6
    store.close()


def test_a_503_is_retried(server):
    j = judge(server, retries=2)
    assert j.compare(ROWS[:1], ["FLAKY a b c"], ["a"]) == [1.0]
    assert len(server.requests) == 4  # each order: a 503, then the answer


def test_a_wrong_key_echoed_by_the_server_is_scrubbed(tmp_path, monkeypatch, caplog):
    other = "sk-wrong-key-ECHOED-by-server"
    monkeypatch.setenv(KEY_ENV, other)
    s = Server()
    try:
        store = LabelStore(tmp_path / "labels.sqlite")
        with caplog.at_level(logging.WARNING):
            assert store.pairwise(judge(s), ROWS[:1], ["a b"], ["a"], iteration=1) == [None]
        store.close()
    finally:
        s.close()
    assert s.requests[0]["auth"] == f"Bearer {other}"  # the server did get (and echo) it
    assert other not in caplog.text and "HTTP 401" in caplog.text
    assert other.encode() not in (tmp_path / "labels.sqlite").read_bytes()
    raw = sqlite3.connect(tmp_path / "labels.sqlite").execute("SELECT raw FROM labels").fetchone()[0]
    assert json.loads(raw)["error"] == 'HTTP 401 Unauthorized: {"error": "invalid api key Bearer ***"}'


def test_redirects_are_not_followed(server):
    """urllib would resend the Authorization header to the redirect target: the judge does not follow."""
    j = build_judge("pairwise_http", {"base_url": server.url.replace("/v1", "/redirect"), "model": "m",
                                      "api_key_env": KEY_ENV, "retries": 0})
    assert j.compare(ROWS[:1], ["a b"], ["a"]) == [None]
    assert "/leak" not in server.paths and "HTTP 302" in j.last_raw[0]["error"]


def test_a_pipeline_run_never_writes_the_key(server, tmp_path):
    """data -> SFT -> one online iteration -> eval with the HTTP judge, as `python -m pipeline run` with the key in
    the environment; then every byte under the run directory (config.yaml, run.log, labels.sqlite, metrics,
    checkpoints...) and the console output are searched for it. (A subprocess: in-process under pytest, its own
    log file handler keeps runner.setup_logging from writing run.log.)"""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: http\nrun_dir: {tmp_path / 'run'}\njudge:\n  name: pairwise_http\n  params:\n"
                      f"    base_url: {server.url}\n    model: judge-7b\n    api_key_env: {KEY_ENV}\n")
    env = {**os.environ, KEY_ENV: SECRET, "HF_HUB_OFFLINE": "1", "TRLHF_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(recipe), *TINY], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"config.yaml", "run.log", "labels.sqlite", "metrics.json", "winrates.csv", "model.safetensors"} <= {
        p.name for p in files}
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked and SECRET not in proc.stdout + proc.stderr
    assert KEY_ENV in (run / "config.yaml").read_text()  # the variable's name is what the recipe keeps
    db = sqlite3.connect(run / "labels.sqlite")
    n_online, n_eval = (db.execute("SELECT COUNT(*) FROM labels WHERE iteration = ?", (t,)).fetchone()[0]
                        for t in ("1", "eval"))
    assert 0 < n_online <= 4 * 3 and n_eval > 0  # 4 prompts x 3 pairs of 3 responses (fewer: repeated pairs)
    assert db.execute("SELECT DISTINCT judge FROM labels").fetchall() == [("pairwise_http:judge-7b",)]
    assert len(server.requests) == 2 * (n_online + n_eval)  # both orders, each query asked once
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}


def test_python_judge_entry_builds_a_users_judge():
    """The `python` judge entry (registered next to pairwise_http; the kill harness wraps the oracle through it)."""
    j = build_judge("python", {"function": "reward_sources.oracle:OracleJudge", "kwargs": {"persona": "concise"}})
    assert (j.kind, j.name) == ("scalar", "oracle[concise,default,t=0.5]")
    with pytest.raises(ValueError) as e:
        build_judge("python", {"function": "builtins:dict"})
    assert str(e.value) == ("python judge: 'builtins:dict' must return an object with a str `name` and `kind` 'scalar' "
                            "(with score(rows, responses, seed)) or 'pairwise' (with compare(rows, a, b, seed))")


@pytest.mark.parametrize("pad", range(222, 262, 4))  # the old cut at 300 fell inside the echoed key
def test_the_key_is_scrubbed_before_the_error_text_is_cut(pad, server, tmp_path, caplog):
    """A server echoing the key wherever the 300-character cut falls leaves no piece of it (the key was cut after
    its first characters, then scrubbed only when whole)."""
    store = LabelStore(tmp_path / "labels.sqlite")
    with caplog.at_level(logging.WARNING):
        assert store.pairwise(judge(server), ROWS[:1], [f"PAD{pad} a"], ["b"], iteration=1) == [None]
    store.close()
    raw = json.loads(sqlite3.connect(tmp_path / "labels.sqlite").execute("SELECT raw FROM labels").fetchone()[0])
    assert len(raw["error"]) <= 300 and "x" * 200 in raw["error"]
    assert SECRET[:3] not in raw["error"] and SECRET[:3] not in caplog.text
    assert SECRET[:3].encode() not in (tmp_path / "labels.sqlite").read_bytes()


def test_a_piece_of_the_key_echoed_alone_is_scrubbed():
    from reward_sources.http_judge import scrub

    assert scrub(f"token={SECRET[:12]}... rest", SECRET) == "token=***... rest"
    assert scrub("Authorization: Bearer abc.def", None) == "Authorization: Bearer ***"
    assert scrub("x" * 400, SECRET) == "x" * 300
    assert scrub(f"echo {SECRET[:4]}", SECRET) == "echo ***"  # cut inside the key before it came here


def test_a_trickling_server_is_cut_off_at_the_deadline(server):
    j = judge(server, timeout=1.0, deadline=1.5)
    t0 = time.monotonic()
    assert j.compare(ROWS[:1], ["TRICKLE a"], ["b"]) == [None]
    assert time.monotonic() - t0 < 4.0  # both orders in parallel; the answer alone would take ~15 s
    assert j.last_raw[0]["error"] == "no complete answer within the deadline of 1.5s"


def test_an_oversized_response_is_a_failure(server):
    j = judge(server)
    assert j.compare(ROWS[:1], ["HUGE a"], ["b"]) == [None]
    assert j.last_raw[0]["error"] == f"response larger than {1 << 20} bytes"
