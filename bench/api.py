"""HTTP API benchmark against a real `invoke-nodes api` server on loopback:

- appends: requests/s of POST /sessions/{id}/nodes (an `integer` node each), 1 client and N concurrent
  clients (each on its own session);
- latency: from PUT /sessions/{id}/invoke to the node_completed event on the WebSocket, for a
  one-node session (a trivial `integer` node with a fresh value, so no cache hit), 1 client and N
  concurrent clients.

    .venv/bin/python bench/api.py [--clients 50] [--appends 400] [--runs 40] [--json]

The server runs in its own process with a temporary user folder; the clients share this one
(asyncio), so at 50 clients the numbers include the client side's own overhead.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from app.api.launch import api_server  # noqa: E402

VALUES = itertools.count(1)  # a fresh value per invoked node: the output cache never answers


async def new_session(http: httpx.AsyncClient, graph: dict | None = None) -> str:
    response = await http.post("/api/v1/sessions/", json=graph)
    response.raise_for_status()
    return response.json()["id"]


async def append_client(http: httpx.AsyncClient, session_id: str, count: int) -> None:
    for value in range(count):
        response = await http.post(f"/api/v1/sessions/{session_id}/nodes", json={"node": {"type": "integer", "value": value}})
        response.raise_for_status()


async def bench_appends(base_url: str, clients: int, total: int) -> dict:
    per_client = max(1, total // clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:
        await append_client(http, await new_session(http), 5)  # warm up: first requests pay for imports and caches
        sessions = [await new_session(http) for _ in range(clients)]  # not timed: creating one writes it to disk
        started = time.perf_counter()
        await asyncio.gather(*(append_client(http, session_id, per_client) for session_id in sessions))
        seconds = time.perf_counter() - started
    requests = per_client * clients
    return {"clients": clients, "requests": requests, "seconds": round(seconds, 3),
            "requests_per_s": round(requests / seconds, 1)}


async def until(socket, kind: str, session_id: str) -> None:
    while True:
        event = json.loads(await socket.recv())
        if event["type"] == kind and event["session_id"] == session_id:
            return


async def latency_client(http: httpx.AsyncClient, ws_url: str, runs: int) -> list[float]:
    samples = []
    async with connect(ws_url) as socket:
        for _ in range(runs):
            session_id = await new_session(http, {"nodes": [{"id": "n", "type": "integer", "value": next(VALUES)}]})
            await socket.send(json.dumps({"action": "subscribe", "session_id": session_id}))
            await until(socket, "subscribed", session_id)  # skips the previous session's last events
            started = time.perf_counter()
            (await http.put(f"/api/v1/sessions/{session_id}/invoke")).raise_for_status()
            await until(socket, "node_completed", session_id)
            samples.append(time.perf_counter() - started)
            await socket.send(json.dumps({"action": "unsubscribe", "session_id": session_id}))
    return samples


async def bench_latency(base_url: str, ws_url: str, clients: int, runs_total: int) -> dict:
    runs = max(1, runs_total // clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:
        await latency_client(http, ws_url, 2)  # warm up
        started = time.perf_counter()
        results = await asyncio.gather(*(latency_client(http, ws_url, runs) for _ in range(clients)))
        seconds = time.perf_counter() - started
    samples = sorted(s * 1000 for client in results for s in client)
    return {"clients": clients, "runs": len(samples), "median_ms": round(statistics.median(samples), 2),
            "p95_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.95))], 2),
            "max_ms": round(samples[-1], 2), "runs_per_s": round(len(samples) / seconds, 1)}


async def run(args: argparse.Namespace, base_url: str, ws_url: str) -> list[dict]:
    results = []
    for clients in (1, args.clients):
        results.append({"bench": "append_node", **await bench_appends(base_url, clients, args.appends)})
    for clients in (1, args.clients):
        total = args.runs if clients == 1 else max(args.runs, clients * 2)
        results.append({"bench": "invoke_to_completed", **await bench_latency(base_url, ws_url, clients, total)})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients for the second round (default 50)")
    parser.add_argument("--appends", type=int, default=400, help="append requests per round (default 400)")
    parser.add_argument("--runs", type=int, default=40, help="invokes per latency round (default 40; at least 2 per client)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per result")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="invoke-nodes-bench-") as root, api_server(Path(root)) as server:
        results = asyncio.run(run(args, server.base_url, server.ws_url))
    for result in results:
        if args.json:
            print(json.dumps(result))
        elif result["bench"] == "append_node":
            print(f"append node   {result['clients']:>3} client(s): {result['requests_per_s']:>8.1f} requests/s "
                  f"({result['requests']} requests in {result['seconds']} s)")
        else:
            print(f"invoke->done  {result['clients']:>3} client(s): median {result['median_ms']:.2f} ms, "
                  f"p95 {result['p95_ms']:.2f} ms, max {result['max_ms']:.2f} ms over {result['runs']} runs "
                  f"({result['runs_per_s']} runs/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
