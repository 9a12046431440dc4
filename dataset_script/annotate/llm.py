"""LLM backend: the paper's stepwise annotation prompt sent to any OpenAI-compatible chat endpoint.

Standard library only (urllib). Replies are parsed as JSON and validated against the step schema; an invalid reply
is retried with the validation error fed back to the model; HTTP 429 / 5xx and timeouts are retried with
exponential backoff. Valid chains are cached on disk by a hash of (endpoint model, prompt, schema), so reruns cost
nothing. Requests are spaced to respect a requests-per-minute limit.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dataset_script.annotate.records import validate_chain
from modeling_stepcot.configuration_stepcot import (
    DEFAULT_STEP_NAMES,
    DEFAULT_STEP_OPTIONS,
    DEFAULT_STEP_QUESTIONS,
    LOCATION,
    NA_OPTION,
    NO_ANSWER,
)

PROMPT_VERSION = "stepcot-annotate-prompt/1"  # part of the cache key: change it when the prompt changes


class LLMError(RuntimeError):
    """The endpoint could not produce a valid chain (after retries), or refused the request."""


class InvalidReply(ValueError):
    """A reply that is not a valid chain; the message is sent back to the model on retry."""


def system_prompt() -> str:
    """The stepwise instructions (paper §2.2 and Table 2), with the schema's questions and options."""
    lines = [
        "You are a board-certified radiologist annotating a chest X-ray radiology report for a stepwise visual "
        "question answering dataset. Answer seven questions in order, as a radiologist reasons: detect abnormal "
        "radiodensity, survey its appearance (distribution, pattern), analyse its features (anatomical location, "
        "margin morphology, secondary effects), then synthesise a diagnosis. Each step must build on the "
        "conclusions of the earlier steps, and its reasoning must say which earlier conclusion it uses.",
        "",
        "Answer logic:",
        "- Answer directly from explicit report content; copy the option text exactly.",
        f'- "{NA_OPTION}" when the question is clinically irrelevant (e.g. no lesion was detected at Step 1); only '
        "steps whose options include it may use it.",
        f'- "{NO_ANSWER}" when the report does not give the information and it cannot be inferred.',
        "- A negated finding (\"no pleural effusion\") is absent. A hedged finding (\"cannot exclude pneumonia\") "
        "may be used only if no stated finding answers the question, and the reasoning must say it is uncertain.",
        "- Each reasoning quotes the report sentence the answer comes from.",
        "",
        "Steps:",
    ]
    for index, (name, question, options) in enumerate(
            zip(DEFAULT_STEP_NAMES, DEFAULT_STEP_QUESTIONS, DEFAULT_STEP_OPTIONS)):
        lines.append(f"Step {index + 1} ({name}): {question} Options: {json.dumps(options)}")
    lines += [
        "",
        'At Step 4 also give "laterality": "left", "right", "bilateral" or null (side not stated / no lesion).',
        "",
        'Reply with one JSON object only, no prose: {"vqa_chain": [{"step": "Step 1", "answer": "...", '
        '"reasoning": "..."}, ... seven entries ..., with "laterality" in the Step 4 entry]}',
    ]
    return "\n".join(lines)


def build_messages(report_text: str) -> list[dict]:
    return [
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": f"Radiology report:\n{report_text}"},
    ]


def parse_reply(content: str) -> list[dict]:
    """Turn a model reply into a full, schema-valid `vqa_chain` (questions and options come from the schema)."""
    text = content.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidReply(f"the reply is not valid JSON ({error.msg} at character {error.pos})") from None
    steps = data.get("vqa_chain") if isinstance(data, dict) else data
    if not isinstance(steps, list):
        raise InvalidReply('the reply must be an object with a "vqa_chain" list')
    if len(steps) != len(DEFAULT_STEP_OPTIONS):
        raise InvalidReply(f'"vqa_chain" must have {len(DEFAULT_STEP_OPTIONS)} entries, got {len(steps)}')
    chain = []
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("answer"), str):
            raise InvalidReply(f'entry {index + 1} of "vqa_chain" must be an object with a text "answer"')
        entry = {
            "step": f"Step {index + 1}",
            "question": DEFAULT_STEP_QUESTIONS[index],
            "options": list(DEFAULT_STEP_OPTIONS[index]),
            "answer": step["answer"].strip(),
            "reasoning": str(step.get("reasoning") or "").strip(),
        }
        if index == LOCATION:
            laterality = step.get("laterality")
            entry["laterality"] = laterality.lower() if isinstance(laterality, str) else laterality
        chain.append(entry)
    try:
        validate_chain(chain, "reply")
    except ValueError as error:
        raise InvalidReply(str(error)) from None
    return chain


@dataclass
class UsageTotals:
    """Running totals for the progress bar and the final summary."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost: float = 0.0

    def summary(self) -> str:
        mean = self.latency_s / self.requests if self.requests else 0.0
        return (f"{self.requests} requests ({self.retries} retries), {self.cache_hits} cache hits, "
                f"{self.prompt_tokens}+{self.completion_tokens} tokens, cost {self.cost:.4f}, "
                f"latency {self.latency_s:.1f} s total / {mean:.2f} s mean")


class LLMAnnotator:
    """Annotates reports through an OpenAI-compatible `/chat/completions` endpoint."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, cache_dir: str | Path | None = None,
                 max_retries: int = 3, timeout_s: float = 60.0, requests_per_minute: float = 0.0,
                 backoff_s: float = 1.0, price_per_1k_prompt: float = 0.0, price_per_1k_completion: float = 0.0,
                 temperature: float = 0.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--base-url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.min_interval_s = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self.backoff_s = backoff_s
        self.price_per_1k_prompt = price_per_1k_prompt
        self.price_per_1k_completion = price_per_1k_completion
        self.temperature = temperature
        self.totals = UsageTotals()
        self._last_request = 0.0

    # -- cache -----------------------------------------------------------------------------------------------
    def _cache_path(self, messages: list[dict]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps({"version": PROMPT_VERSION, "model": self.model, "temperature": self.temperature,
                          "messages": messages, "options": DEFAULT_STEP_OPTIONS}, sort_keys=True)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def _cached_chain(self, path: Path | None) -> list[dict] | None:
        if path is None or not path.is_file():
            return None
        try:
            chain = json.loads(path.read_text(encoding="utf-8"))["vqa_chain"]
            validate_chain(chain, f"cache file {path}")
        except (ValueError, KeyError, TypeError):
            return None  # a stale or damaged entry is ignored and overwritten
        return chain

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _wait_for_rate_limit(self) -> None:
        wait = self._last_request + self.min_interval_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_request = time.monotonic()

    def _post(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "response_format": {"type": "json_object"}}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        self._wait_for_rate_limit()
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        finally:
            self.totals.requests += 1
            self.totals.latency_s += time.monotonic() - started
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise InvalidReply("the endpoint's response is not an OpenAI chat completion") from None
        usage = data.get("usage") or {}
        prompt_tokens, completion_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        self.totals.prompt_tokens += prompt_tokens
        self.totals.completion_tokens += completion_tokens
        self.totals.cost += (prompt_tokens * self.price_per_1k_prompt
                             + completion_tokens * self.price_per_1k_completion) / 1000.0
        if not isinstance(content, str):
            raise InvalidReply("the message content is empty")
        return content

    def annotate(self, report_text: str, where: str = "report") -> list[dict]:
        """The validated chain for one report (from the cache when possible). Raises LLMError."""
        messages = build_messages(report_text)
        cache_path = self._cache_path(messages)
        cached = self._cached_chain(cache_path)
        if cached is not None:
            self.totals.cache_hits += 1
            return cached
        conversation = list(messages)
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.totals.retries += 1
            content = None
            try:
                content = self._post(conversation)
                chain = parse_reply(content)
            except InvalidReply as error:
                last_error = f"invalid reply: {error}"
                if content is not None:
                    # Show the model its mistake so that the retry can fix it.
                    conversation = messages + [
                        {"role": "assistant", "content": content},
                        {"role": "user", "content": f"That reply was rejected: {error}. Reply again with the "
                                                    "corrected JSON object only."},
                    ]
                continue
            except urllib.error.HTTPError as error:
                last_error = f"HTTP {error.code} from {self.url}"
                if error.code != 429 and error.code < 500:
                    raise LLMError(f"{where}: {last_error} (not retried): {error.read()[:200]!r}") from None
                retry_after = error.headers.get("Retry-After") if error.headers else None
                delay = float(retry_after) if retry_after and retry_after.isdigit() else None
                time.sleep(min(delay if delay is not None else self.backoff_s * 2 ** attempt, 60.0))
                continue
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as error:
                last_error = f"no reply from {self.url} ({getattr(error, 'reason', error)})"
                time.sleep(min(self.backoff_s * 2 ** attempt, 60.0))
                continue
            if cache_path is not None:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache_path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"model": self.model, "vqa_chain": chain}), encoding="utf-8")
                tmp.replace(cache_path)
            return chain
        raise LLMError(f"{where}: no valid chain after {self.max_retries + 1} attempts; last error: {last_error}")
