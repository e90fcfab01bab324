"""`edgenas agent`: the device agent that times models on this machine for an edgenas elsewhere."""

from __future__ import annotations

import click

from edgenas.cli._app import cli
from edgenas.errors import ConfigError


@cli.group()
def agent() -> None:
    """The device agent: run it on a board, point a `runtime: remote` profile at it.

    On a board without edgenas, the same server is one file: `pip install onnxruntime numpy`, copy
    edgenas/agent/server.py there and run `python3 server.py serve` (see docs/your_own_device.md).
    """


@agent.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback exposes the board (prefer an ssh tunnel).")
@click.option("--port", type=int, default=8765, show_default=True, help="Port; 0 picks a free one (printed).")
@click.option("--token-env", default="EDGENAS_AGENT_TOKEN", show_default=True,
              help="Environment variable holding the token clients must send.")
@click.option("--insecure-no-token", is_flag=True, help="Accept requests without a token (loopback only).")
@click.option("--max-model-mb", type=float, default=64.0, show_default=True, help="Largest ONNX model accepted.")
@click.option("--max-request-mb", type=float, default=256.0, show_default=True,
              help="Largest request (all its models) accepted, checked before the body is read.")
@click.option("--max-models", type=int, default=2000, show_default=True, help="Most models in one request.")
@click.option("--rate-limit", type=int, default=60, show_default=True,
              help="Requests per minute (bursts up to that many); more are answered 429 with Retry-After.")
@click.option("--max-request-s", type=float, default=600.0, show_default=True,
              help="A measurement running longer is stopped between models and answered with an error.")
@click.option("--debug-delay-s", type=float, default=0.0, hidden=True, help="Tests only: a slow board.")
def agent_serve(host: str, port: int, token_env: str, insecure_no_token: bool, max_model_mb: float,
                max_request_mb: float, max_models: int, rate_limit: int, max_request_s: float,
                debug_delay_s: float) -> None:
    """Time ONNX models sent by edgenas on this machine, until interrupted.

    Needs onnxruntime and numpy only. The token is read from $EDGENAS_AGENT_TOKEN (or --token-env);
    set the same value where edgenas runs and name the agent's URL in a profile's `remote` block.
    """
    from edgenas.agent.server import AgentConfig, AgentConfigError, serve

    try:
        config = AgentConfig(host=host, port=port, token_env=token_env, insecure_no_token=insecure_no_token,
                             max_model_mb=max_model_mb, max_request_mb=max_request_mb, max_models=max_models,
                             rate_per_minute=rate_limit, max_request_s=max_request_s, debug_delay_s=debug_delay_s)
        serve(config)
    except AgentConfigError as exc:
        raise ConfigError(str(exc)) from None
