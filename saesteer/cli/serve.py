"""`saesteer serve`: the (steered) model over an OpenAI-compatible API, with a side-by-side page."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Optional

import typer

from saesteer.cli.common import DeviceOpt, DtypeOpt, ModelArg, app, say, setup
from saesteer.cli.core import (AblateOpt, AddOpt, ClampOpt, HookOpt, PositionsOpt, SaeOpt, ScaleOpt, SteerOpt,
                               steering_from_options)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_listen(host: str, port: int) -> None:
    """Fail now, before the model loads, if uvicorn could not listen on host:port."""
    import errno
    import socket

    from saesteer.errors import SaesteerError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise SaesteerError(f"--host {host!r} is not an address this machine can listen on "
                            f"({getattr(e, 'strerror', None) or e}); use 127.0.0.1, 0.0.0.0 or one of its IPs") from e
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise SaesteerError(f"port {port} on {host} is already in use; stop the other server "
                                    "or choose another --port") from e
            if e.errno == errno.EADDRNOTAVAIL:
                raise SaesteerError(f"--host {host} is not an address of this machine; use 127.0.0.1, "
                                    "0.0.0.0 or one of its IPs") from e
            raise SaesteerError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --host "
                                "or --port") from e


@app.command()
def serve(
    model: ModelArg,
    steer: SteerOpt = None,
    sae: SaeOpt = None,
    hook: HookOpt = None,
    clamp: ClampOpt = [],  # noqa: B006 - typer needs a literal default
    add: AddOpt = [],  # noqa: B006
    scale: ScaleOpt = [],  # noqa: B006
    ablate: AblateOpt = [],  # noqa: B006
    positions: PositionsOpt = None,
    register: Annotated[list[str], typer.Option("--register", help="NAME=SPEC: also serve this spec as MODEL:NAME (repeatable).")] = [],  # noqa: B006
    register_sae: Annotated[list[str], typer.Option("--register-sae", help="NAME=SAE_DIR: an SAE that request-level steering may name (repeatable).")] = [],  # noqa: B006
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="SAESTEER_API_KEY", show_envvar=True,
                                                   help="Bearer token clients must send.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without a key (loopback hosts only).")] = False,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Served model name (default: the alias or folder name).")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body (HTTP 413 above).")] = 1_048_576,
    max_messages: Annotated[int, typer.Option(help="Most messages per request (HTTP 413 above).")] = 64,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="Most prompt tokens (HTTP 413 above; default: the context).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for (HTTP 422 above).")] = 1024,
    default_max_tokens: Annotated[int, typer.Option(help="max_tokens of requests that give none.")] = 256,
    default_temperature: Annotated[float, typer.Option(help="Temperature of requests that give none (0 = greedy).")] = 0.0,
    max_queue: Annotated[int, typer.Option(help="Most waiting requests (HTTP 429 above).")] = 64,
    max_batch_size: Annotated[int, typer.Option(help="Most rows generated together.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(help="Wait this long for company before running a lone request.")] = 0.0,
    no_page: Annotated[bool, typer.Option("--no-page", help="Do not serve the side-by-side web page.")] = False,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default). On a CPU shared with other jobs, 1 can be several times faster.")] = 0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Serve MODEL (optionally steered) over an OpenAI-compatible API, with a side-by-side page at /."""
    from saesteer.errors import SaesteerError

    if no_auth:
        if not is_loopback(host):
            raise SaesteerError(f"--no-auth is only allowed on a loopback host (127.0.0.1, ::1, localhost), "
                                f"not {host}; give --api-key or set SAESTEER_API_KEY")
        if api_key:
            say("note: --no-auth given: the API key is ignored")
        api_key = None
    elif not api_key:
        raise SaesteerError("serve needs an API key: --api-key KEY or SAESTEER_API_KEY=KEY"
                            + ("; on loopback you may pass --no-auth instead" if is_loopback(host) else ""))
    if not 0 < port < 65536:
        raise SaesteerError(f"--port {port} is not a TCP port (1-65535)")
    check_listen(host, port)
    setup(None)
    from saesteer.serve import Registry, ServeSettings, create_app
    from saesteer.serve.registry import parse_pairs
    from saesteer.steer import SteeringSpec

    settings = ServeSettings(api_key=api_key, max_body_bytes=max_body_bytes, max_messages=max_messages,
                             max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
                             default_max_tokens=default_max_tokens, default_temperature=default_temperature,
                             max_queue=max_queue, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                             page=not no_page)
    deployment = steering_from_options(steer, sae, hook, clamp, add, scale, ablate, positions)
    specs = {name: SteeringSpec.load(Path(path)) for name, path in parse_pairs(register, "--register").items()}
    saes = parse_pairs(register_sae, "--register-sae")

    from saesteer.models import load_model

    if threads < 0:
        raise SaesteerError("--threads must be >= 0")
    if threads:
        import torch

        torch.set_num_threads(threads)
    lm = load_model(model, dtype=dtype, device=device)
    registry = Registry.build(lm, model_name=model_name, deployment=deployment, specs=specs, saes=saes)
    application = create_app(lm, registry, settings)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    say(f"serving {', '.join(registry.model_ids())}")
    say(f"page: {url}/   API: {url}/v1   auth: {'bearer key' if api_key else 'none (loopback)'}")

    import uvicorn

    uvicorn.run(application, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
