"""The gateway's cost over a direct solve: the same plan on the same loaded engines and the same
database, once through `solve_question` and once as an HTTP request to `ttc gateway`'s app (uvicorn
in a thread of this process, spoken to with httpx), interleaved so drift hits both alike.

Prints the median seconds per request of each, the gateway's overhead per request in milliseconds
(goal: under 10 ms), and requests/s at concurrency 1 and 8 for both, with the gateway's ratio to the
direct baseline measured in the same run.

    python benchmarks/gateway.py [--requests 40] [--plan majority@1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import uvicorn

from flows.gateway import GatewaySettings, Solver, create_app
from flows.gateway.requests import ChatRequest, plan_of
from flows.service.config import ModelSettings
from flows.service.solving import solve_question
from tests.processes import free_port


def questions(count: int, offset: int) -> list[str]:
    """Distinct questions (each request its own problem), alike in length."""
    return [f"Compute ({offset + i} + 4) * 3 - 2." for i in range(count)]


def rate(call: Callable[[str], object], asked: list[str], concurrency: int) -> float:
    """Requests per second over `asked`, `concurrency` at a time."""
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, asked))
    return len(asked) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--plan", default="majority@1", help="the model name every request asks for")
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="ttc-gateway-bench-"))
    database = f"sqlite:///{folder / 'ttc.db'}"
    models = ModelSettings()
    solver = Solver(models, database, workers=8)
    solver.warm_up()
    asked = ChatRequest.model_validate({"model": options.plan, "messages": [{"role": "user", "content": "1 + 1"}]})
    plan = plan_of(asked, None)  # the plan the gateway runs for this model name

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(solver, GatewaySettings()), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    pooled = threading.local()

    def direct(question: str) -> object:
        return solve_question(question, strategy=plan.strategy, values=plan.values, models=models, database=database)

    def through_gateway(question: str) -> object:
        session = getattr(pooled, "client", None)
        if session is None:
            session = pooled.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
        body = {"model": options.plan, "messages": [{"role": "user", "content": question}]}
        answer = session.post("/v1/chat/completions", json=body)
        answer.raise_for_status()
        return answer.json()

    for question in questions(5, 1000):  # warm both paths (first graph compile, first connection)
        direct(question)
        through_gateway(question)

    direct_seconds, gateway_seconds = [], []
    for i, question in enumerate(questions(options.requests, 2000)):
        for call, into in ((direct, direct_seconds), (through_gateway, gateway_seconds))[:: 1 if i % 2 else -1]:
            began = time.perf_counter()
            call(question)
            into.append(time.perf_counter() - began)
    direct_median, gateway_median = statistics.median(direct_seconds), statistics.median(gateway_seconds)

    refusals = []
    bad = {"model": options.plan, "messages": [{"role": "user", "content": "Compute 1 + 1."}], "n": 2}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as session:
        for _ in range(options.requests):
            began = time.perf_counter()
            assert session.post("/v1/chat/completions", json=bad).status_code == 400
            refusals.append(time.perf_counter() - began)
    refused = statistics.median(refusals)

    rates = {}
    for concurrency in (1, 8):
        asked = questions(options.requests, 10_000 * concurrency)
        rates[("direct", concurrency)] = rate(direct, asked, concurrency)
        rates[("gateway", concurrency)] = rate(through_gateway, [f"{q} " for q in asked], concurrency)
    server.should_exit = True
    solver.close()

    print(f"plan {options.plan} on testbed engines, SQLite, {options.requests} requests per measurement")
    for label, seconds in (("direct solve_question", direct_seconds), ("through the gateway  ", gateway_seconds)):
        mean = statistics.fmean(seconds) * 1000
        print(f"{label}: median {statistics.median(seconds) * 1000:.1f} ms, mean {mean:.1f} ms per request")
    overhead = (gateway_median - direct_median) * 1000
    ratio = gateway_median / direct_median
    print(f"gateway overhead: {overhead:.1f} ms per request at the median (goal < 10 ms) · ratio {ratio:.2f}×")
    print(f"the HTTP path alone (a request refused before any search): median {refused * 1000:.2f} ms")
    for concurrency in (1, 8):
        d, g = rates[("direct", concurrency)], rates[("gateway", concurrency)]
        print(f"concurrency {concurrency}: direct {d:.1f} req/s · gateway {g:.1f} req/s · ratio {g / d:.2f}×")


if __name__ == "__main__":
    main()
