"""`saesteer serve` against hostile request bodies: every one gets a 4xx JSON error (or 200 when it is
valid), never a 5xx, and no error shows the client a path on the server. Loopback only, bounded loops."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
import threading

import pytest

from saesteer.serve import ServeSettings, create_app
from tests.test_serve import AUTH, KEY, SETTINGS, answer, files, free_port, lm, registry, wait_for  # noqa: F401

DEEP = 20_000
SAE_OK = {"sae": "sae", "features": [{"feature": 3, "op": "clamp", "value": 8}]}
MSG = [{"role": "user", "content": "Hi"}]


def chat(**fields) -> dict:
    return {"model": "tiny", "messages": MSG, "max_tokens": 2, **fields}


def steer(**fields) -> dict:
    return chat(steering={**SAE_OK, **fields})


def raw(fields: str) -> bytes:
    """A chat body with JSON text spliced in (for literals `json.dumps` will not write)."""
    head = '{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, '
    return (head + fields + "}").encode()


# (name, body, status, code): a dict/list is sent as JSON, bytes as they are; code None: any code.
CHAT = [
    # the top level
    ("array body", [1, 2], 422, "invalid_value"),
    ("null body", None, 422, "invalid_value"),
    ("string body", "hello", 422, "invalid_value"),
    ("not JSON", b"{model: tiny}", 400, "invalid_json"),
    ("invalid UTF-8", b'{"model": "\xff\xfe"}', 400, "invalid_json"),
    ("lone surrogate", raw('"stop": ["\\ud800"]'), 400, "invalid_json"),
    ("NaN literal", raw('"temperature": NaN'), 400, "invalid_json"),
    ("Infinity literal", raw('"top_p": Infinity'), 400, "invalid_json"),
    ("-Infinity in an ignored field", raw('"presence_penalty": -Infinity'), 400, "invalid_json"),
    ("a 5,000-digit number", raw('"max_tokens": ' + "9" * 5000), 400, "invalid_json"),
    ("deeply nested array", b"[" * DEEP + b"]" * DEEP, 400, "invalid_json"),
    ("deeply nested in an ignored key", raw('"x": ' + "[" * 5000 + "]" * 5000), 400, "invalid_json"),
    ("nested 100 deep", raw('"metadata": ' + '{"a": ' * 100 + "1" + "}" * 100), 400, "invalid_json"),
    ("unknown keys are ignored", chat(frobnicate={"a": [1, 2]}, user="u", presence_penalty=0.5), 200, None),
    # model
    ("model: int", chat(model=7), 422, "invalid_value"),
    ("model: null", chat(model=None), 422, "invalid_value"),
    ("model: empty", chat(model=""), 422, "invalid_value"),
    ("model: list", chat(model=["tiny"]), 422, "invalid_value"),
    ("model: huge", chat(model="m" * 40_000), 422, "invalid_value"),
    ("model: NUL", chat(model="tiny\u0000"), 404, "model_not_found"),
    ("model: unicode", chat(model="tïny:🙂"), 404, "model_not_found"),
    ("model: trailing colon", chat(model="tiny:"), 404, "model_not_found"),
    ("model: a server path", chat(model="/etc/passwd"), 404, "model_not_found"),
    # messages
    ("messages: object", chat(messages={"role": "user"}), 422, "invalid_value"),
    ("messages: [1]", chat(messages=[1]), 422, "invalid_value"),
    ("message without content", chat(messages=[{"role": "user"}]), 422, "invalid_value"),
    ("message role list", chat(messages=[{"role": ["user"], "content": "x"}]), 422, "invalid_value"),
    ("content object", chat(messages=[{"role": "user", "content": {"text": "x"}}]), 422, "invalid_value"),
    ("image part", chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]), 422, "invalid_value"),
    ("unicode content", chat(messages=[{"role": "user", "content": "👋🏽 مرحبا 你好 \u0000 \u2028"}]), 200, None),
    ("special tokens in content", chat(messages=[{"role": "user", "content": "<|im_end|><|im_start|>system"}]), 200,
     None),
    ("huge content", chat(messages=[{"role": "user", "content": "a" * 40_000}]), 413, "context_length_exceeded"),
    # numbers
    ("max_tokens: -1", chat(max_tokens=-1), 422, "invalid_value"),
    ("max_tokens: 10^30", chat(max_tokens=10**30), 422, "invalid_value"),
    ("max_tokens: 1.5", chat(max_tokens=1.5), 422, "invalid_value"),
    ("max_tokens: true", chat(max_tokens=True), 422, "invalid_value"),
    ("max_completion_tokens: 0", chat(max_completion_tokens=0), 422, "invalid_value"),
    ("temperature: -0.1", chat(temperature=-0.1), 422, "invalid_value"),
    ("temperature: 1e309", raw('"temperature": 1e309'), 422, "invalid_value"),
    ("top_p: 0", chat(top_p=0), 422, "invalid_value"),
    ("n: 0", chat(n=0), 422, "invalid_value"),
    ("n: 10^20", chat(n=10**20), 422, "invalid_value"),
    ("seed 2^63, sampled", chat(seed=2**63, temperature=0.7), 422, "invalid_value"),
    ("seed 10^100, sampled", chat(seed=10**100, temperature=0.7), 422, "invalid_value"),
    ("seed: string", chat(seed="1", temperature=0.7), 422, "invalid_value"),
    ("seed 2^63 - 1, sampled", chat(seed=2**63 - 1, temperature=0.7), 200, None),
    ("seed -2^63, sampled", chat(seed=-2**63, temperature=1.0), 200, None),
    ("seed 10^15, sampled", chat(seed=10**15, temperature=0.7), 200, None),
    # other fields
    ("stream: 1", chat(stream=1), 422, "invalid_value"),
    ("stream_options: string", chat(stream_options="yes"), 422, "invalid_value"),
    ("stop: [1]", chat(stop=[1]), 422, "invalid_value"),
    ("stop: empty", chat(stop=""), 422, "invalid_value"),
    ("stop: long", chat(stop=["x" * 65]), 422, "invalid_value"),
    ("tools: string", chat(tools="x"), 422, "invalid_value"),
    ("logprobs", chat(logprobs=True), 422, "unsupported_parameter"),
    # steering: not a name, not an object
    ("steering: 42", chat(steering=42), 422, "invalid_value"),
    ("steering: []", chat(steering=[]), 422, "invalid_value"),
    ("steering: true", chat(steering=True), 422, "invalid_value"),
    ("steering: [object]", chat(steering=[SAE_OK]), 422, "invalid_value"),
    ("steering: empty name", chat(steering=""), 422, "invalid_value"),
    ("steering: null", chat(steering=None), 200, None),
    # steering objects of every wrong kind
    ("steering: {}", chat(steering={}), 422, "invalid_steering"),
    ("steering.sae: int", chat(steering={"sae": 1, "features": SAE_OK["features"]}), 422, "invalid_value"),
    ("steering.features: string", steer(features="1"), 422, "invalid_value"),
    ("steering.features: [1]", steer(features=[1]), 422, "invalid_value"),
    ("feature: string", steer(features=[{"feature": "3"}]), 422, "invalid_value"),
    ("feature: -1", steer(features=[{"feature": -1}]), 422, "invalid_value"),
    ("feature: 10^30", steer(features=[{"feature": 10**30}]), 422, "invalid_steering"),
    ("op: explode", steer(features=[{"feature": 3, "op": "explode"}]), 422, "invalid_value"),
    ("value: string", steer(features=[{"feature": 3, "value": "8"}]), 422, "invalid_value"),
    ("value: 10^400", steer(features=[{"feature": 3, "value": 10**400}]), 422, "invalid_value"),
    ("value: 1e5", steer(features=[{"feature": 3, "value": 1e5}]), 422, "invalid_value"),
    ("value: NaN", raw('"steering": {"sae": "sae", "features": [{"feature": 3, "value": NaN}]}'), 400, "invalid_json"),
    ("33 features", steer(features=[{"feature": i} for i in range(33)]), 422, "invalid_value"),
    ("strength: string", steer(strength="2"), 422, "invalid_value"),
    ("strength: true", steer(strength=True), 422, "invalid_value"),
    ("strength: 10^400", steer(strength=10**400), 422, "invalid_value"),
    ("strength x value over the cap", steer(features=[{"feature": 3, "value": 9000}], strength=9000), 422,
     "invalid_steering"),
    ("strength x value at the cap", steer(features=[{"feature": 3, "value": 100}], strength=100), 200, None),
    ("spec strength over the cap", chat(steering={"spec": "steered", "strength": 1e4}), 422, "invalid_steering"),
    ("vector spec strength over the cap", chat(steering={"spec": "vec", "strength": -1e4}), 422, "invalid_steering"),
    ("positions: everywhere", chat(steering={"spec": "steered", "positions": "everywhere"}), 422, "invalid_value"),
    ("spec with features", chat(steering={"spec": "steered", **SAE_OK}), 422, "invalid_steering"),
    ("spec: none", chat(steering={"spec": "none"}), 422, "invalid_steering"),
    ("spec and unknown key", chat(steering={"spec": "steered", "path": "/etc/passwd"}), 422, "invalid_value"),
    ("sae: a path", chat(steering={"sae": "/etc/passwd", "features": [{"feature": 1}]}), 404, "sae_not_found"),
    ("hook: -100", steer(hook=-100), 422, "invalid_steering"),
    ("hook: 10^30", steer(hook=10**30), 422, "invalid_value"),
    ("hook: superscript two", steer(hook="\u00b2"), 422, "invalid_value"),
    ("hook: object", steer(hook={"layer": 1}), 422, "invalid_value"),
    ("hook: another layer than the SAE's", steer(hook=2), 422, "invalid_steering"),
    ("hook: a submodule", steer(hook="model.layers.1.mlp"), 422, "invalid_steering"),
    ("condition: string", steer(condition="always"), 422, "invalid_value"),
    ("condition without threshold", steer(condition={"feature": 1}), 422, "invalid_value"),
    ("threshold 1e300", steer(condition={"feature": 1, "threshold": 1e300}), 422, "invalid_value"),
    ("threshold 10^400", steer(condition={"feature": 1, "threshold": 10**400}), 422, "invalid_value"),
    ("threshold -1e5", steer(condition={"feature": 1, "threshold": -1e5}), 422, "invalid_value"),
    ("threshold -Infinity", raw('"steering": {"sae": "sae", "features": [{"feature": 3}], '
                                '"condition": {"feature": 1, "threshold": -Infinity}}'), 400, "invalid_json"),
    ("condition feature out of range", steer(condition={"feature": 999, "threshold": 0}), 422, "invalid_steering"),
    ("condition pooling", steer(condition={"feature": 1, "threshold": 0, "pooling": "median"}), 422, "invalid_value"),
    ("condition pooling window0", steer(condition={"feature": 1, "threshold": 0, "pooling": "window0"}), 422,
     "invalid_value"),
    ("condition pooling window8", steer(condition={"feature": 1, "threshold": 0.5, "pooling": "window8"}), 200, None),
    ("condition sae unknown", steer(condition={"feature": 1, "threshold": 0, "sae": "nope"}), 404, "sae_not_found"),
    ("condition at another layer", steer(condition={"feature": 1, "threshold": 0, "hook": 3}), 422,
     "invalid_steering"),
    ("valid conditional steering", steer(condition={"feature": 1, "threshold": 0.5}, positions="generated"), 200, None),
]

COMPARE_MSG = {"messages": MSG, "max_tokens": 2}
COMPARE = [
    ("compare: model empty", {**COMPARE_MSG, "model": ""}, 422, "invalid_value"),
    ("compare: steering []", {**COMPARE_MSG, "steering": []}, 422, "invalid_value"),
    ("compare: steered_messages []", {**COMPARE_MSG, "steered_messages": []}, 422, "invalid_value"),
    ("compare: unknown key", {**COMPARE_MSG, "frobnicate": 1}, 422, "invalid_value"),
    ("compare: max_tokens -5", {**COMPARE_MSG, "max_tokens": -5}, 422, "invalid_value"),
    ("compare: probe string", {**COMPARE_MSG, "probe": "x"}, 422, "invalid_value"),
    ("compare: probe feature 10^30", {**COMPARE_MSG, "probe": {"sae": "sae", "feature": 10**30}}, 422,
     "invalid_value"),
    ("compare: probe at another layer", {**COMPARE_MSG, "probe": {"sae": "sae", "feature": 1, "hook": 2}}, 422,
     "invalid_value"),
    ("compare: threshold 1e999", b'{"messages": [{"role": "user", "content": "Hi"}], "steering": {"sae": "sae", '
     b'"features": [{"feature": 3}], "condition": {"feature": 1, "threshold": 1e999}}}', 422, "invalid_value"),
    ("compare: deeply nested", b'{"messages": ' + b"[" * DEEP + b"]" * DEEP + b"}", 400, "invalid_json"),
    ("compare: valid", {**COMPARE_MSG, "steering": SAE_OK}, 200, None),
]

# A path a message must never show: the server's own folders (a client's echoed path is shown as <path>).
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"/]+/")


@pytest.fixture(scope="module")
def client(lm, registry):  # noqa: F811 - the fixtures imported above
    from fastapi.testclient import TestClient

    with TestClient(create_app(lm, registry, ServeSettings(**SETTINGS)), raise_server_exceptions=False) as c:
        yield c


def send(client, path: str, body) -> object:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, headers=AUTH | {"Content-Type": "application/json"}, content=content)


def test_hostile_bodies_get_a_4xx_json_error_never_a_5xx(client, files):  # noqa: F811
    assert len(CHAT) + len(COMPARE) >= 40
    secrets = [str(files["root"]), str(files["sae"].resolve()), os.getcwd(), sys.prefix]
    wrong = []
    for path, cases in (("/v1/chat/completions", CHAT), ("/v1/saesteer/compare", COMPARE)):
        for name, body, status, code in cases:
            r = send(client, path, body)
            if r.status_code != status or any(s in r.text for s in secrets):
                wrong.append(f"{name}: {r.status_code} (expected {status}) {r.text[:300]}")
                continue
            if status == 200:
                continue
            err = r.json()["error"]
            if (set(err) != {"message", "type", "param", "code"} or not err["message"]
                    or code is not None and err["code"] != code or err["type"] != "invalid_request_error"
                    or ABSOLUTE_PATH.search(err["message"])):
                wrong.append(f"{name}: {err}")
    assert not wrong, "\n".join(wrong)
    assert answer(send(client, "/v1/chat/completions", chat())) is not None  # still serving


def test_invalid_steering_objects_say_what_steering_looks_like(client):
    for body in (chat(steering=[]), chat(steering=7), steer(features=[{"feature": "x"}]), steer(bogus=1)):
        message = send(client, "/v1/chat/completions", body).json()["error"]["message"]
        assert message.startswith("steering") and ".str" not in message and "features" in message, message


def test_steering_errors_name_the_registered_sae_not_its_path(client, files):  # noqa: F811
    r = send(client, "/v1/chat/completions", steer(hook=2))
    message = r.json()["error"]["message"]
    assert "'sae'" in message and "layer 1" in message, message
    assert str(files["sae"]) not in r.text and "/" not in message, message


def test_seeded_samples_are_reproducible_at_any_seed(client):
    for seed in (2**63 - 1, -2**63, 123):
        first, again = (answer(send(client, "/v1/chat/completions", chat(seed=seed, temperature=1.0, max_tokens=6)))
                        for _ in range(2))
        assert first == again


# --- a real server: a half-sent body ------------------------------------------------------------------

@contextlib.contextmanager
def uvicorn_server(app):
    import uvicorn

    # log_config=None: uvicorn's records reach the root logger, so caplog sees any traceback.
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=30)
    try:
        yield server.config.port
    finally:
        server.should_exit = True
        thread.join(15)


def test_a_half_sent_body_is_one_quiet_log_line(lm, registry, caplog):  # noqa: F811
    import httpx

    caplog.set_level(logging.INFO)
    with uvicorn_server(create_app(lm, registry, ServeSettings(**SETTINGS))) as port:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          + f"Authorization: Bearer {KEY}\r\nContent-Length: 5000\r\n\r\n".encode()
                          + b'{"model": "tiny", "messages": [')
        wait_for(lambda: sum("before sending its whole body" in r.getMessage() for r in caplog.records) == 3,
                 timeout=20)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=AUTH, json=chat(), timeout=60)
        assert r.status_code == 200
    noisy = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage() or r.levelno >= logging.ERROR]
    assert not noisy, [r.getMessage() for r in noisy]
    quiet = [r for r in caplog.records if "before sending its whole body" in r.getMessage()]
    assert all(r.levelno == logging.INFO and "\n" not in r.getMessage() for r in quiet)
