"""A proposer on any OpenAI-compatible completions server (vLLM, SGLang, llama.cpp, ollama).

URI: `openai:URL[,URL...]#MODEL[?concurrency=8&timeout=60&retries=3&backoff=0.5&batch=16&params=1.5e9]`.
Several base URLs share the requests round-robin. One `generate` call is split into requests of at
most `batch` prompts (each asking for `n` samples), sent `concurrency` at a time over all threads
that use the engine. A 5xx answer, a dropped connection or a timeout is retried with exponential
backoff on the next URL, then raised as `TransientEngineError`; any other 4xx is an `EngineError`
carrying the server's message. Servers that ignore `n > 1` are detected and sent repeated requests.
An API key, when the server wants one, comes from the OPENAI_API_KEY environment variable. Credentials
written into a URL (`http://user:KEY@host/v1`) are taken off it and sent as basic auth, so no message,
log line (httpx's included) or `.uri` holds them (`.uri` is the URI through `masked_uri`). The model's
context is the server's to know (`context` is None): a prompt past it comes back as the server's own
refusal, an EngineError carrying its message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from ttc_nodes.engines.base import Completion, EngineError, TransientEngineError
from ttc_nodes.engines.batched import BatchedProposer, Row, Sampling, chunks
from ttc_nodes.engines.uris import masked_uri

log = logging.getLogger(__name__)

_RETRIED_STATUS = {408, 429}  # besides every 5xx: a request timeout or rate limit is worth another try


@dataclass(frozen=True)
class _Request:
    """One completions request: some of the call's rows (a prompt each), `n` samples of each."""

    rows: list[Row]
    n: int
    seed: int | None

    @property
    def prompts(self) -> list[str]:
        return [row.prompt for row in self.rows]


def _request(rows: list[Row], n: int, seed: int | None, repeat: int) -> _Request:
    """A request for `rows`. Every request gets its own seed, derived from the call's seed, so asking
    again for a prompt does not return the sample it returned before."""
    return _Request(rows, n, _derive(seed, repeat, rows[0].position))


class OpenAIProposer(BatchedProposer):
    """Samples from the completions endpoint of one or more OpenAI-compatible servers."""

    one_row_per_sample = False  # a request asks for n samples of each of its prompts
    max_batch: int

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        batch: int = 16,
        params: float = 0,
        api_key: str | None = None,
        uri: str | None = None,
    ) -> None:
        if not base_urls or not model:
            raise ValueError("an openai engine needs at least one base URL and a model name (URL#model)")
        for name, value, least in [("concurrency", concurrency, 1), ("batch", batch, 1), ("retries", retries, 0)]:
            if value < least:
                raise ValueError(f"openai engine option {name} must be >= {least}, got {value}")
        if timeout <= 0 or backoff < 0:
            raise ValueError(f"openai engine options need timeout > 0 and backoff >= 0, got {timeout}, {backoff}")
        # Base URLs without their credentials (what messages and httpx's log name), each with its own.
        split = [_without_credentials(url.rstrip("/")) for url in base_urls]
        self.base_urls = [url for url, _ in split]
        self._auth = dict(split)
        self.model = model
        self.uri = masked_uri(uri or f"openai:{','.join(base_urls)}#{model}")
        self.context: int | None = None
        self.retries = retries
        self.backoff = backoff
        self.max_batch = batch
        self.parameters = int(params)
        if self.parameters <= 0:
            log.warning("%s: no ?params= given, so FLOPs for this engine count as 0", self.uri)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        # One pool per engine: its size is the limit on requests in flight, whichever thread asks.
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai-engine")
        self._next_url = 0
        self._url_lock = threading.Lock()
        self._ignores_n = False
        try:
            self._check_servers()
        except EngineError:
            self.close()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    @property
    def batch(self) -> int:
        """Prompts a request at most (the URI's `batch`)."""
        return self.max_batch

    def _run(self, batches: list[list[Row]], sampling: Sampling) -> list[list[Completion]]:
        """A request a batch, `concurrency` in flight at once over all threads."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "logprobs": 1,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        asked, seed = sampling.samples, sampling.seed
        rows = [row for batch in batches for row in batch]  # one a prompt: rows[i].position == i
        answers: list[list[Completion]] = [[] for _ in rows]
        first_round = [_request(batch, 1 if self._ignores_n else asked, seed, repeat=0) for batch in batches]
        self._send(first_round, body, sampling.stop, answers)
        while short := [row for row in rows if len(answers[row.position]) < asked]:
            # Only a server that ignores `n` leaves rows short: ask again, one sample per request row.
            fill = [
                _request(chunk, 1, seed, repeat)
                for repeat in range(min(len(answers[row.position]) for row in short), asked)
                for chunk in chunks([row for row in short if len(answers[row.position]) <= repeat], self.max_batch)
            ]
            self._send(fill, body, sampling.stop, answers)
        return answers

    def _send(
        self, requests: list[_Request], body: dict[str, Any], stop: Sequence[str], answers: list[list[Completion]]
    ) -> None:
        """Send `requests` at once, adding each prompt's completions to `answers` at its position."""
        replies = self._pool.map(lambda r: self._complete(r, body, stop), requests)
        for request, per_prompt in zip(requests, replies, strict=True):
            for row, completions in zip(request.rows, per_prompt, strict=True):
                answers[row.position].extend(completions)

    def _complete(self, request: _Request, body: dict[str, Any], stop: Sequence[str]) -> list[list[Completion]]:
        payload = {**body, "prompt": request.prompts, "n": request.n}
        if request.seed is not None:
            payload["seed"] = request.seed
        response = self._post(payload)
        choices = sorted(response.get("choices") or [], key=lambda c: int(c.get("index", 0)))
        expected = len(request.prompts) * request.n
        if len(choices) != expected:
            if request.n > 1 and len(choices) == len(request.prompts):
                self._note_ignored_n()
                per_prompt = 1
            else:
                raise EngineError(
                    f"{self.uri}: the server returned {len(choices)} choices "
                    f"for {len(request.prompts)} prompt(s) x n={request.n}"
                )
        else:
            per_prompt = request.n
        prompt_tokens = _apportion(_usage(response, "prompt_tokens"), [len(p) for p in request.prompts])
        completion_tokens = _apportion(
            _usage(response, "completion_tokens"), [len(str(c.get("text", ""))) for c in choices]
        )
        completions = [
            _completion(choice, prompt_tokens[i // per_prompt], completion_tokens[i], stop)
            for i, choice in enumerate(choices)
        ]
        return [completions[k * per_prompt : (k + 1) * per_prompt] for k in range(len(request.prompts))]

    def _note_ignored_n(self) -> None:
        with self._url_lock:
            first, self._ignores_n = not self._ignores_n, True
        if first:
            log.warning("%s: the server ignores n > 1; sending one request per sample from now on", self.uri)

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST to /completions with retries, each on the next URL in turn."""
        problem = ""
        tried: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            url = self._take_url(avoid=tried[-1] if tried else None)
            tried.append(url)
            try:
                response = self._client.post(f"{url}/completions", json=payload, auth=self._auth[url])
            except httpx.TimeoutException as error:
                problem = f"timed out ({type(error).__name__})"
                continue
            except httpx.TransportError as error:  # refused, reset, dropped mid-response
                problem = f"connection failed ({type(error).__name__}: {error})"
                continue
            if response.status_code >= 500 or response.status_code in _RETRIED_STATUS:
                problem = f"HTTP {response.status_code}: {_server_message(response)}"
                continue
            if response.status_code >= 400:
                raise EngineError(
                    f"{url}/completions rejected the request: HTTP {response.status_code}: {_server_message(response)}"
                )
            try:
                decoded: dict[str, Any] = response.json()
            except ValueError:
                raise EngineError(
                    f"{url}/completions answered with something that is not JSON: {response.text[:200]!r}"
                ) from None
            return decoded
        where = ", ".join(sorted(set(tried)))
        raise TransientEngineError(f"{where}: {problem} after {self.retries + 1} attempt(s)")

    def _take_url(self, avoid: str | None = None) -> str:
        """The next base URL in turn; a retry skips the one that just failed when there are others."""
        with self._url_lock:
            for _ in self.base_urls:
                url = self.base_urls[self._next_url % len(self.base_urls)]
                self._next_url += 1
                if url != avoid:
                    break
        return url

    def _check_servers(self) -> None:
        """Fail at load, not mid-run, when a server is down or does not serve the model."""
        for url in self.base_urls:
            try:
                response = self._client.get(f"{url}/models", auth=self._auth[url])
            except httpx.HTTPError as error:
                raise EngineError(
                    f"cannot reach the OpenAI-compatible server at {url}: {type(error).__name__}: {error}"
                ) from None
            if response.status_code != 200:
                continue  # not every server lists its models; a wrong name then fails on the first request
            try:
                served = [str(m.get("id")) for m in response.json().get("data", [])]
            except (ValueError, AttributeError):
                continue
            if served and self.model not in served:
                raise EngineError(f"{url} does not serve model {self.model!r}; it serves: {', '.join(served)}")


def _without_credentials(url: str) -> tuple[str, httpx.Auth]:
    """`http://user:key@host/v1` → (`http://host/v1`, basic auth as user, key); a URL without
    credentials → (url, no auth)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, httpx.Auth()
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), httpx.BasicAuth(unquote(user), unquote(password))


def _derive(seed: int | None, repeat: int, first: int) -> int | None:
    """The seed of the request for prompts from `first` on, on its `repeat`-th try for more samples.
    The first request of a call uses the call's seed itself."""
    if seed is None:
        return None
    return (seed + 1_000_003 * repeat + first) % 2**31


def _usage(response: dict[str, Any], field: str) -> int | None:
    usage = response.get("usage") or {}
    value = usage.get(field)
    return int(value) if isinstance(value, int | float) else None


def _apportion(total: int | None, weights: Sequence[int]) -> list[int | None]:
    """Split a request's total over its parts in proportion to `weights`, summing exactly to it.

    The completions API reports tokens per request, not per prompt: per-part counts of a request with
    several prompts are estimates (by length), but totals are exact, and a lone prompt gets its own.
    """
    if total is None or not weights:
        return [None] * len(weights)
    if sum(weights) == 0:
        weights = [1] * len(weights)
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(share) for share in shares]
    largest_remainders = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in largest_remainders[: total - sum(counts)]:
        counts[i] += 1
    return list(counts)


def _completion(
    choice: dict[str, Any], prompt_tokens: int | None, usage_tokens: int | None, stop: Sequence[str]
) -> Completion:
    text = str(choice.get("text") or "")
    logprobs = choice.get("logprobs") or {}
    token_logprobs = [x for x in logprobs.get("token_logprobs") or [] if x is not None]
    tokens = logprobs.get("tokens")
    completion_tokens = len(tokens) if tokens is not None else usage_tokens
    finish = choice.get("finish_reason")
    reason = choice.get("stop_reason")
    stop_reason = reason if isinstance(reason, str) and reason in stop else None
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if hits:  # some servers leave the stop string in the text; cut it as vLLM does
        cut, string = min(hits)
        text, stop_reason, finish = text[:cut], string, "stop"
    if finish in ("abort", "error"):
        raise TransientEngineError(f"the server ended a completion with finish_reason={finish!r}")
    if finish not in ("stop", "length"):
        raise EngineError(f"the server ended a completion with an unknown finish_reason={finish!r}")
    finish_reason: Literal["stop", "length"] = "stop" if finish == "stop" else "length"
    return Completion(
        text=text,
        prompt_tokens=prompt_tokens or 0,
        completion_tokens=completion_tokens or 0,
        logprob=float(sum(token_logprobs)),
        finish_reason=finish_reason,
        stop_reason=stop_reason if finish_reason == "stop" else None,
    )


def _server_message(response: httpx.Response) -> str:
    """The error text a server sent: OpenAI/vLLM `error.message`, FastAPI `detail`, or the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(body)[:300]


def parse_location(location: str) -> tuple[list[str], str]:
    """`URL[,URL...]#MODEL` → (base URLs, model name)."""
    urls, sep, model = location.partition("#")
    base_urls = [url.strip() for url in urls.split(",") if url.strip()]
    if not sep or not model or not base_urls:
        raise ValueError(
            f"openai URI location {masked_uri(location)!r} is not URL[,URL...]#MODEL "
            "(e.g. openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-Math-1.5B-Instruct?concurrency=8)"
        )
    for url in base_urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"openai base URL {masked_uri(url)!r} must start with http:// or https://")
    return base_urls, model
