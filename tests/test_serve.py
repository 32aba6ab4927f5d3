"""`saesteer serve`: API semantics, limits, batching, streaming and real clients, on a tiny random model."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

from saesteer.generate import GenerationConfig, generate
from saesteer.hooks import forward_hooks, hook_point
from saesteer.sae import TopKSAE, save_sae
from saesteer.serve import Registry, ServeSettings, create_app
from saesteer.steer import ConditionSpec, FeatureEdit, FileRef, InterventionSpec, SteeringSpec, steer
from saesteer.steer.directions import save_vectors
from tests.tiny import tiny_model

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPTS = ["Hi", "Write a poem about the sea", "How do I kill a process?", "Explain photosynthesis",
           "The quick brown fox", "Sure, here is a recipe", "0123456789", "I'm sorry, but",
           "pancakes with flour", "light, water and carbon dioxide", "Use the kill command", "the shore at night"]


# --- fixtures: a tiny model, an SAE, a vector, and the specs built on them -----------------------

@pytest.fixture(scope="module")
def lm():
    """The tiny random Llama with its weights scaled up, so that its answers depend on the prompt
    (at the default scale every prompt gets the same answer, which would hide cross-talk)."""
    lm = tiny_model("llama")
    with torch.no_grad():
        for name, p in lm.model.named_parameters():
            if "norm" not in name:
                p.mul_(6)
    return lm


@pytest.fixture(scope="module")
def files(lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    # k = d_sae: every latent with a positive pre-activation is active, so probed features fire.
    sae = TopKSAE.init(lm.d_model, 128, 128, seed=1)
    sae.metadata.update({"layer": 1, "hf_hook_name": "model.layers.1"})
    save_sae(sae, root / "sae")
    save_vectors(root / "dirs.safetensors", {"v": torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))})
    clamp = SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", sae=FileRef(str(root / "sae")),
                                                         features=[FeatureEdit(3, "clamp", 20.0)])], name="clamp")
    vec = SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", vector=FileRef(str(root / "dirs.safetensors")),
                                                       op="add", value=4.0)], name="vec")
    clamp.save(root / "clamp.yaml")
    vec.save(root / "vec.yaml")
    return {"root": root, "sae": root / "sae", "clamp": clamp, "vec": vec}


@pytest.fixture(scope="module")
def registry(lm, files):
    return Registry.build(lm, model_name="tiny", deployment=files["clamp"], specs={"vec": files["vec"]})


SETTINGS = dict(api_key=KEY, max_body_bytes=50_000, max_messages=8, max_tokens=64, default_max_tokens=16)


@pytest.fixture(scope="module")
def client(lm, registry):
    from fastapi.testclient import TestClient

    with TestClient(create_app(lm, registry, ServeSettings(**SETTINGS))) as c:
        yield c


_REFERENCE_COPIES: dict[int, object] = {}


def reference(lm, prompt, spec=None, max_tokens=8) -> str:
    """What the Python API answers alone (greedy), with `spec` active.

    It runs on a private copy of the model: the server's worker thread may still be leaving its
    steering context after the last row of a batch is delivered, and steering hooks installed on
    the shared model from this thread at that moment would leak into the server's next request.
    """
    if id(lm) not in _REFERENCE_COPIES:
        _REFERENCE_COPIES[id(lm)] = copy.deepcopy(lm)
    ref = _REFERENCE_COPIES[id(lm)]
    with steer(ref, spec):
        return generate(ref, [prompt], GenerationConfig(max_new_tokens=max_tokens))[0].text


def chat(prompt, model="tiny", max_tokens=8, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, **extra}


def post(c, body, headers=AUTH, path="/v1/chat/completions"):
    return c.post(path, headers=headers, json=body)


def answer(r) -> str:
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def assert_error(r, status, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err


def sse_events(text: str) -> list:
    assert text.endswith("data: [DONE]\n\n"), text[-200:]
    blocks = text.split("\n\n")[:-1]
    assert all(b.startswith("data: ") for b in blocks), blocks
    return [json.loads(b[6:]) for b in blocks[:-1]]


# --- auth, models, plain and streamed completions ---------------------------------------------------

def test_health_is_open_and_v1_needs_the_bearer_key(client):
    assert client.get("/health").json() == {"status": "ok", "model": "tiny", "auth": True}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        r = client.get("/v1/models", headers=headers)
        assert_error(r, 401, "invalid_api_key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(post(client, chat("Hi"), headers=headers), 401, "invalid_api_key")
    ids = [m["id"] for m in client.get("/v1/models", headers=AUTH).json()["data"]]
    assert ids == ["tiny", "tiny:unsteered", "tiny:steered", "tiny:vec"]
    assert client.get("/v1/models/tiny:vec", headers=AUTH).json()["saesteer"]["spec_hash"]
    assert_error(client.get("/v1/models/other", headers=AUTH), 404, "model_not_found")


def test_completions_equal_the_python_api_for_every_model_name(client, lm, files):
    for prompt in PROMPTS[:3]:
        unsteered, clamped, vec = (reference(lm, prompt, s) for s in (None, files["clamp"], files["vec"]))
        assert len({unsteered, clamped, vec}) == 3  # the steering changes these answers
        assert answer(post(client, chat(prompt, "tiny:unsteered"))) == unsteered
        assert answer(post(client, chat(prompt, "tiny:steered"))) == clamped
        assert answer(post(client, chat(prompt, "tiny"))) == clamped  # the deployment default is the --steer spec
        assert answer(post(client, chat(prompt, "tiny:vec"))) == vec
    r = post(client, chat("Hi", "tiny:unsteered", max_tokens=5))
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny:unsteered"
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 5 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["saesteer"] == {"steering": "tiny:unsteered", "spec_hash": None, "steered": [False],
                                "detector_scores": [None]}


def test_streaming_is_openai_sse_and_matches_the_plain_answer(client):
    for model in ("tiny:unsteered", "tiny"):
        plain = answer(post(client, chat("Write a poem", model, max_tokens=12)))
        r = post(client, chat("Write a poem", model, max_tokens=12, stream=True, stream_options={"include_usage": True}))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        assert all(e["object"] == "chat.completion.chunk" and e["model"] == model for e in events)
        assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
        assert text == plain
        finals = [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
        assert len(finals) == 1 and finals[0]["saesteer"]["steered"] == (model == "tiny")
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_stop_strings_and_n_choices(client, lm):
    full = answer(post(client, chat("Hi", "tiny:unsteered", max_tokens=16)))
    stop = full.strip("\ufffd")[2:4] if len(full.strip("\ufffd")) >= 4 else None
    if stop:
        cut = answer(post(client, chat("Hi", "tiny:unsteered", max_tokens=16, stop=stop)))
        assert full.startswith(cut) and stop not in cut
        r = post(client, chat("Hi", "tiny:unsteered", max_tokens=16, stop=[stop], stream=True))
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(r.text)) == cut
    r = post(client, chat("Hi", "tiny:unsteered", max_tokens=6, n=3))
    assert [c["index"] for c in r.json()["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in r.json()["choices"]} == {reference(lm, "Hi", None, 6)}  # greedy


# --- steering per request ---------------------------------------------------------------------------

def test_request_steering_names_registered_saes_and_specs(client, lm, files):
    prompt = "How do I kill a process?"
    edits = [{"feature": 5, "op": "clamp", "value": 30}]
    spec = SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", sae=FileRef(str(files["sae"])),
                                                        features=[FeatureEdit(5, "clamp", 30.0)])])
    expected = reference(lm, prompt, spec)
    r = post(client, chat(prompt, "tiny:unsteered", steering={"sae": "sae", "features": edits}))
    assert answer(r) == expected and r.json()["saesteer"]["steering"] == "request"
    # strength multiplies the values: 2 x 15 == 30
    half = [{"feature": 5, "op": "clamp", "value": 15}]
    assert answer(post(client, chat(prompt, steering={"sae": "sae", "features": half, "strength": 2}))) == expected
    assert answer(post(client, chat(prompt, steering="vec"))) == reference(lm, prompt, files["vec"])
    assert answer(post(client, chat(prompt, steering="tiny:vec"))) == reference(lm, prompt, files["vec"])
    assert answer(post(client, chat(prompt, steering="none"))) == reference(lm, prompt)
    # strength 0 on an `add` direction leaves the model as it is
    assert answer(post(client, chat(prompt, steering={"spec": "vec", "strength": 0}))) == reference(lm, prompt)


@pytest.mark.parametrize("steering,status,code", [
    ({"sae": str(Path("/etc/passwd"))}, 404, "sae_not_found"),
    ({"sae": "../sae", "features": [{"feature": 1}]}, 404, "sae_not_found"),
    ({"sae": "sae", "path": "/tmp/x", "features": [{"feature": 1}]}, 422, "invalid_value"),
    ({"vector": {"path": "/tmp/x.safetensors"}}, 422, "invalid_value"),
    ({"saesteer_spec": 1, "interventions": [{"hook": 1, "sae": "/tmp/sae", "features": [{"feature": 1}]}]}, 422, None),
    ({"spec": "/tmp/evil.yaml"}, 404, "spec_not_found"),
    ("../clamp.yaml", 404, "spec_not_found"),
    ({"sae": "sae", "features": [{"feature": 1, "value": 1e9}]}, 422, "invalid_value"),
    ({"sae": "sae", "features": [{"feature": 100000}]}, 422, "invalid_steering"),
    ({"sae": "sae", "features": []}, 422, "invalid_steering"),
    ({"spec": "vec", "sae": "sae"}, 422, "invalid_steering"),
    (42, 422, "invalid_value"),
])
def test_request_steering_cannot_name_files_or_unknown_things(client, steering, status, code):
    assert_error(post(client, chat("Hi", steering=steering)), status, code)


def test_conditional_steering_is_decided_per_request_inside_one_batch(lm, files):
    from fastapi.testclient import TestClient

    prompts = ["Write a poem about the sea", "0123456789 + - * /"]
    probe = SteeringSpec(interventions=files["clamp"].interventions,
                         condition=ConditionSpec(detector="sae_feature", hook="model.layers.1", threshold=0.0,
                                                 sae=FileRef(str(files["sae"])), feature=7))
    from saesteer.steer import Steering

    st = Steering(lm, probe)
    with st.active():
        generate(lm, prompts, GenerationConfig(max_new_tokens=1, batch_size=2))
    scores = [st.gate.scores[0], st.gate.scores[1]]
    assert scores[0] != scores[1]
    conditional = SteeringSpec(interventions=files["clamp"].interventions, condition=ConditionSpec(
        detector="sae_feature", hook="model.layers.1", threshold=sum(scores) / 2, sae=FileRef(str(files["sae"])),
        feature=7))
    fires = [s > sum(scores) / 2 for s in scores]
    expected = [reference(lm, p, files["clamp"] if f else None) for p, f in zip(prompts, fires)]
    registry = Registry.build(lm, model_name="tiny", deployment=conditional)
    app = create_app(lm, registry, ServeSettings(**SETTINGS))
    with TestClient(app) as c, hold_model(lm) as release, ThreadPoolExecutor(5) as pool:
        blocker = pool.submit(post, c, chat("Hi", "tiny:unsteered"))
        wait_for(lambda: app.state.batcher.running_rows == 1)
        futures = [pool.submit(post, c, chat(p)) for p in prompts + prompts]
        wait_for(lambda: app.state.batcher.waiting == 4)
        release()
        results = [f.result() for f in futures]
        assert blocker.result().status_code == 200
    for r, f, e in zip(results, fires + fires, expected + expected):
        assert answer(r) == e
        info = r.json()["saesteer"]
        assert info["steered"] == [f] and info["detector_scores"][0] is not None
    assert app.state.batcher.stats.max_batch_rows == 4  # steered and unsteered rows in one generate call


# --- limits and bad input ---------------------------------------------------------------------------

def test_bad_input_gets_the_right_status_and_a_json_error(client):
    bad = [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_value"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"messages": "hello"}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"messages": []}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"max_tokens": "8"}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"max_tokens": 0}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"max_tokens": 65}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"temperature": "hot"}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"temperature": 3}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"stream": "yes"}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"n": 9}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"stop": ["a", "b", "c", "d", "e"]}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"model": 7}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x", model="gpt-4o")).encode(), 404, "model_not_found"),
        (json.dumps(chat("x", model="tiny:nope")).encode(), 404, "model_not_found"),
        (json.dumps(chat("x", steering="nope")).encode(), 404, "spec_not_found"),
        (json.dumps({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}).encode(), 422, "invalid_value"),
        (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": None}]}).encode(), 422, "invalid_value"),
        (json.dumps(chat("x") | {"tools": [{"type": "function"}]}).encode(), 422, "unsupported_parameter"),
        (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x"}] * 9}).encode(), 413,
         "too_many_messages"),
        (json.dumps(chat("word " * 600)).encode(), 413, "context_length_exceeded"),
        (json.dumps(chat("word " * 100, max_tokens=64) | {"messages": [{"role": "user", "content": "hi " * 150}]}).encode(),
         413, "context_length_exceeded"),
        (json.dumps(chat("x" * 60_000)).encode(), 413, "request_too_large"),
    ]
    for body, status, code in bad:
        r = client.post("/v1/chat/completions", headers=AUTH | {"Content-Type": "application/json"}, content=body)
        assert_error(r, status, code)

    def chunked():  # no Content-Length: the limit applies while the body streams in
        for _ in range(20):
            yield b"x" * 5000

    assert_error(client.post("/v1/chat/completions", headers=AUTH, content=chunked()), 413, "request_too_large")
    assert_error(client.get("/v1/chat/completions", headers=AUTH), 405)
    assert_error(client.get("/v1/nothing-here", headers=AUTH), 404)
    # content parts and the developer role are accepted as OpenAI's clients send them
    parts = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "developer", "content": "Be brief."},
                                                             {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert post(client, parts).status_code == 200
    assert answer(post(client, chat("Hi"))) != ""  # still serving


def test_full_queue_gets_429_with_retry_after(lm, registry):
    from fastapi.testclient import TestClient

    app = create_app(lm, registry, ServeSettings(**SETTINGS | {"max_queue": 1}))
    with TestClient(app) as c, hold_model(lm) as release, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, c, chat("Hi"))
        wait_for(lambda: app.state.batcher.running_rows == 1)
        second = pool.submit(post, c, chat("Hello"))
        wait_for(lambda: app.state.batcher.waiting == 1)
        r = post(c, chat("Third"))
        assert_error(r, 429, "queue_full")
        assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        release()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert post(c, chat("Third")).status_code == 200


def test_compare_returns_both_answers_and_per_token_activations(client, lm, files):
    prompt = "Write a poem about the sea"
    r = post(client, {"messages": [{"role": "user", "content": prompt}], "max_tokens": 8}, path="/v1/saesteer/compare")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unsteered"]["text"] == reference(lm, prompt)
    assert body["steered"]["text"] == reference(lm, prompt, files["clamp"])
    assert body["probe"] == {"kind": "sae_feature", "sae": "sae", "feature": 3, "hook": "model.layers.1"}
    for side in ("unsteered", "steered"):
        tokens = body[side]["tokens"]
        assert "".join(t["text"] for t in tokens) == body[side]["text"]
        assert all(isinstance(t["activation"], float) and t["activation"] >= 0 for t in tokens)
    assert any(t["activation"] > 0 for side in ("unsteered", "steered") for t in body[side]["tokens"])
    for side in ("unsteered", "steered"):   # each answer is judged: refusal, coherent, outcome
        v = body[side]["verdict"]
        assert isinstance(v["refusal"], bool) and isinstance(v["coherent"], bool)
        assert v["outcome"] in ("refusal", "compliance", "broken")
    # an explicit probe, request-level steering, and a direction spec (projection on the direction)
    r = post(client, {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4,
                      "steering": {"sae": "sae", "features": [{"feature": 9, "op": "add", "value": 5}]},
                      "probe": {"sae": "sae", "feature": 9}}, path="/v1/saesteer/compare")
    assert r.json()["probe"]["feature"] == 9
    r = post(client, {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "steering": "vec"},
             path="/v1/saesteer/compare")
    assert r.json()["probe"]["kind"] == "direction"
    assert_error(post(client, {"messages": [{"role": "user", "content": "x"}], "steering": "none"},
                      path="/v1/saesteer/compare"), 422, "invalid_steering")
    assert_error(post(client, {"messages": [{"role": "user", "content": "x"}], "probe": {"sae": "x", "feature": 1}},
                      path="/v1/saesteer/compare"), 404, "sae_not_found")


def test_page_is_served_with_a_strict_content_security_policy(client):
    r = client.get("/")
    assert r.status_code == 200 and "Unsteered" in r.text and "Steered" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404


# --- a real uvicorn server: concurrency, disconnects, the official openai client -------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture(scope="module")
def server(lm, registry):
    app = create_app(lm, registry, ServeSettings(**SETTINGS))
    with running(app) as url:
        yield url, app


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, lm, files):
    url, app = server
    cases = [(p, ("tiny:unsteered", "tiny")[i % 2], 4 + i % 5) for i, p in enumerate(PROMPTS)]
    expected = [reference(lm, p, files["clamp"] if m == "tiny" else None, n) for p, m, n in cases]
    stats = app.state.batcher.stats
    before = stats.batches
    with hold_model(lm) as release, httpx.Client(base_url=url, headers=AUTH, timeout=60) as http, \
            ThreadPoolExecutor(len(cases) + 1) as pool:
        blocker = pool.submit(http.post, "/v1/chat/completions", json=chat("Hi", "tiny:vec"))
        wait_for(lambda: app.state.batcher.running_rows == 1)
        futures = [pool.submit(http.post, "/v1/chat/completions", json=chat(p, m, n)) for p, m, n in cases]
        wait_for(lambda: app.state.batcher.waiting == len(cases))
        release()
        got = [answer(f.result()) for f in futures]
        assert blocker.result().status_code == 200
    assert got == expected
    # the blocker, then one batch per steering: 6 unsteered rows and 6 steered rows
    assert stats.batches - before == 3 and stats.max_batch_rows == 6


def test_client_disconnect_mid_stream_stops_the_row_and_the_server_keeps_serving(server, lm):
    url, app = server
    stats = app.state.batcher.stats
    cancelled, tokens = stats.cancelled, stats.tokens
    with slow_model(lm, 0.05):
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as http, \
                http.stream("POST", "/v1/chat/completions",
                            json=chat("Write a poem", "tiny:unsteered", max_tokens=64, stream=True)) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first event arrived; now hang up
        wait_for(lambda: stats.cancelled > cancelled, timeout=20)
    assert stats.tokens - tokens < 64  # the row left the batch early
    # a non-streaming client that hangs up is noticed too
    with slow_model(lm, 0.05):
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
            body = json.dumps(chat("Write a poem", "tiny:unsteered", max_tokens=64)).encode()
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_for(lambda: app.state.batcher.running_rows == 1)
        wait_for(lambda: stats.cancelled > cancelled + 1, timeout=20)
    r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=chat("Hi", "tiny:unsteered"))
    assert answer(r) == reference(lm, "Hi")


def test_official_openai_client_chat_stream_and_extra_body(server, lm, files):
    openai = pytest.importorskip("openai")
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} == {"tiny", "tiny:unsteered", "tiny:steered", "tiny:vec"}
    messages = [{"role": "user", "content": "Explain photosynthesis"}]
    plain = client.chat.completions.create(model="tiny:unsteered", messages=messages, max_tokens=8)
    assert plain.choices[0].message.content == reference(lm, "Explain photosynthesis")
    assert plain.usage.completion_tokens == 8 or plain.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="tiny:steered", messages=messages, max_tokens=8, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == reference(lm, "Explain photosynthesis", files["clamp"])
    steered = client.chat.completions.create(model="tiny:unsteered", messages=messages, max_tokens=8,
                                             extra_body={"steering": "vec"})
    assert steered.choices[0].message.content == reference(lm, "Explain photosynthesis", files["vec"])
    assert steered.model_extra["saesteer"]["steering"] == "tiny:vec"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=messages)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="tiny", messages=messages, extra_body={"steering": {"sae": "sae", "path": "/"}})


# --- the CLI ----------------------------------------------------------------------------------------

def run_cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-c", "from saesteer.cli import main; main()", *args], check=False,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def test_cli_refuses_to_serve_without_a_key_off_loopback(monkeypatch):
    from typer.testing import CliRunner

    from saesteer.cli import app
    from saesteer.errors import SaesteerError

    monkeypatch.delenv("SAESTEER_API_KEY", raising=False)
    for args, message in ((["--host", "0.0.0.0", "--no-auth"], "only allowed on a loopback host"),
                          (["--host", "0.0.0.0"], "serve needs an API key"),
                          (["--host", "127.0.0.1"], "--no-auth instead"),
                          (["--api-key", "k", "--port", "0"], "not a TCP port")):
        result = CliRunner().invoke(app, ["serve", "smollm2", *args])
        assert isinstance(result.exception, SaesteerError) and message in str(result.exception)
    r = run_cli("serve", "smollm2", "--host", "10.1.2.3", timeout=120)  # what a user sees: one line, exit 2
    assert r.returncode == 2 and r.stderr.startswith("error: serve needs an API key")


def test_cli_serves_a_model_folder_with_a_spec(lm, files, tmp_path):
    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", "from saesteer.cli import main; main()", "serve", str(folder),
                             "--steer", str(files["root"] / "clamp.yaml"), "--register",
                             f"vec={files['root'] / 'vec.yaml'}", "--host", "127.0.0.1", "--port", str(port),
                             "--api-key", KEY, "--device", "cpu"], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                return False

        wait_for(up, timeout=120)
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"]]
        assert ids == ["tiny", "tiny:unsteered", "tiny:steered", "tiny:vec"]
        r = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, json=chat("Hi", "tiny:unsteered"), timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"page: {url}/" in err


# --- the real model (slow) ----------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_served_answers_equal_generate(smollm2):
    from fastapi.testclient import TestClient

    registry = Registry.build(smollm2)
    with TestClient(create_app(smollm2, registry, ServeSettings(api_key=KEY))) as c:
        prompts = ["What is the capital of France?", "Write a haiku about autumn."]
        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(lambda p: answer(post(c, chat(p, "smollm2", max_tokens=24))), prompts))
        r = post(c, chat(prompts[0], "smollm2", max_tokens=24, stream=True))
        streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in sse_events(r.text) if e["choices"])
    assert got == [reference(smollm2, p, None, 24) for p in prompts]
    assert streamed == got[0] and "Paris" in got[0]


# --- helpers ----------------------------------------------------------------------------------------

def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


@contextlib.contextmanager
def hold_model(lm):
    """Block the model's first forward until `release()`: requests pile up in the queue meanwhile."""
    gate = threading.Event()

    def hook(_module, _inputs, _output):
        gate.wait(30)

    with forward_hooks([(hook_point(lm.model, 0).module, hook)]):
        try:
            yield gate.set
        finally:
            gate.set()


@contextlib.contextmanager
def slow_model(lm, seconds: float):
    with forward_hooks([(hook_point(lm.model, 0).module, lambda *_: time.sleep(seconds))]):
        yield


def test_scaling_a_registered_sae_spec_scales_its_feature_edits():
    """The page's strength slider scales every edit; an SAE intervention's own value scales with it."""
    from saesteer.serve.registry import scale_spec
    from saesteer.steer import FeatureEdit, FileRef, InterventionSpec, SteeringSpec

    spec = SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", sae=FileRef("sae"),
                                                        features=[FeatureEdit(3, "clamp", 2.0)])])
    scaled = scale_spec(spec, 1.5)
    assert scaled.interventions[0].features[0].value == 3.0
