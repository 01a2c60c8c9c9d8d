"""`invoke-nodes api`: serve the HTTP API and the event socket with uvicorn."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

TOKEN_ENV = "INVOKE_NODES_TOKEN"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="invoke-nodes api", description="Serve the HTTP API with live events.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=9090, help="port (default 9090)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV) or None,
                        help=f"require this token on every request and socket (default: ${TOKEN_ENV})")
    parser.add_argument("--max-upload-mb", type=float, default=32.0, help="largest accepted request body (default 32 MiB)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--executor", choices=("in-process", "worker"), default=None,
                       help="where generation nodes run: this process, or a separate AI worker process "
                            "(default: the api_executor setting, in-process)")
    where.add_argument("--cluster", metavar="WHERE", default=None,
                       help="run generation nodes on Ray: local (a worker per GPU), local:N (N workers) or "
                            "ray://HOST:PORT (a running cluster); needs pip install -e '.[cluster]'")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_warning(host: str, token: str | None) -> str | None:
    if is_loopback(host) or token is not None:
        return None
    return (f"WARNING: listening on {host} with no authentication: anyone who can reach this address can "
            f"run nodes and read your images. Set --token or ${TOKEN_ENV}.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    loopback = is_loopback(args.host)
    warning = startup_warning(args.host, args.token)
    if warning:
        print(warning, file=sys.stderr)
    import uvicorn

    from services.config import Settings
    from services.container import RAY, Services
    from services.invoker import Invoker

    from .app import create_app
    from .guard import LOOPBACK_HOSTS

    settings = Settings.load()
    executor = args.executor or settings.api_executor
    if args.cluster is not None:
        settings.cluster, executor = args.cluster, RAY
    try:
        invoker = Invoker(Services.local(settings, executor=executor))
    except (ImportError, ValueError, ConnectionError) as exc:  # no Ray, or a cluster address it cannot use
        print(f"invoke-nodes api: {exc}", file=sys.stderr)
        return 2
    for error in invoker.plugin_errors:
        print(f"warning: {error}", file=sys.stderr)
    app = create_app(invoker, token=args.token, allowed_hosts=(LOOPBACK_HOSTS | {args.host}) if loopback else None,
                     max_upload_bytes=int(args.max_upload_mb * 2**20))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, ws="auto",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    finally:
        invoker.shutdown()
    return 0 if server.started else 1
