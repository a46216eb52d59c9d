"""SLO mode's inputs: arrival rate and mean lengths from the routers' counters (pure).

Every pass reads, per router, four counters from the same page as the queue depth:
``baton_requests_total`` (requests received, every ``api``/``stream`` label), and of finished
requests ``baton_e2e_request_latency_seconds_count``, ``baton_prompt_tokens_total`` and
``baton_generation_tokens_total``. Two successive samples make a :class:`Window` of deltas.
A window is left out when a counter went down or a router's start time changed (a restart),
or when the set of routers changed (one started or went: its counts in the window are
unknown), so cold starts never read as a burst or a lull. :func:`estimate` averages the windows
that end within the rate window: the rate is requests over seconds, the mean lengths are tokens
over finished requests. :func:`bucket_up` rounds the estimate up to a geometric bucket: the
planner's input, and its cache key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The sample names (a counter family `baton_requests` exposes `baton_requests_total`).
REQUESTS = "baton_requests_total"
FINISHED = "baton_e2e_request_latency_seconds_count"
PROMPT_TOKENS = "baton_prompt_tokens_total"
GENERATION_TOKENS = "baton_generation_tokens_total"
STARTED = "baton_prompt_tokens_created"  # prometheus_client's creation time: the router's start
COUNTER_SAMPLES = (REQUESTS, FINISHED, PROMPT_TOKENS, GENERATION_TOKENS)
# Rounding of the planner's inputs: 10% steps, rounded up (plan for slightly more, never less).
RATE_STEP = 1.1
LENGTH_STEP = 1.1
_EPS = 1e-9


@dataclass(frozen=True)
class Counters:
    """One router's counters at one instant; ``started`` is its start time when it exports it."""

    requests: float = 0.0
    finished: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    started: float | None = None


@dataclass(frozen=True)
class CounterSample:
    """Every router's counters at unix time ``time``, keyed by the router's identity (its scrape
    URL and labels). ``identified`` is False when a read may reach a different router each time
    (a Service URL in front of several): such samples never make a window."""

    time: float
    routers: Mapping[str, Counters]
    identified: bool = True


@dataclass(frozen=True)
class Window:
    """What happened between two samples: ``seconds`` long, ending at ``end``."""

    end: float
    seconds: float
    requests: float
    finished: float
    prompt_tokens: float
    generation_tokens: float


@dataclass(frozen=True)
class Estimate:
    """Arrival rate (req/s) and mean prompt/output lengths (tokens; None when no request finished
    in the windows) over ``seconds`` of ``windows`` windows."""

    rate_rps: float
    input_tokens: float | None
    output_tokens: float | None
    seconds: float
    windows: int


def window(prev: CounterSample | None, cur: CounterSample, max_seconds: float) -> tuple[Window | None, str]:
    """The window between two successive samples, or None and why it is left out."""
    if prev is None:
        return None, "first sample"
    if not (prev.identified and cur.identified):
        return None, "the routers are not told apart (no router address known: the Service is scraped)"
    seconds = cur.time - prev.time
    if not 0 < seconds <= max_seconds:
        return None, f"{seconds:.1f}s between samples"
    if set(prev.routers) != set(cur.routers):
        return None, "a router started or went"
    totals = [0.0, 0.0, 0.0, 0.0]
    for key, now in cur.routers.items():
        before = prev.routers[key]
        if before.started != now.started:
            return None, "a router restarted"
        deltas = (
            now.requests - before.requests,
            now.finished - before.finished,
            now.prompt_tokens - before.prompt_tokens,
            now.generation_tokens - before.generation_tokens,
        )
        if min(deltas) < -_EPS:
            return None, "a router's counters went back (a restart)"
        totals = [t + max(0.0, d) for t, d in zip(totals, deltas, strict=True)]
    return Window(cur.time, seconds, *totals), ""


def recent(windows: Sequence[Window], now: float, window_s: float) -> list[Window]:
    """The windows that end within the last ``window_s`` seconds (the others can be dropped)."""
    return [w for w in windows if w.end > now - window_s + _EPS]


def estimate(windows: Sequence[Window], now: float, window_s: float) -> Estimate | None:
    """Rate and mean lengths over the windows ending within ``window_s`` of ``now``; None when
    there is none (no two usable samples yet)."""
    used = recent(windows, now, window_s)
    seconds = sum(w.seconds for w in used)
    if not used or seconds <= 0:
        return None
    finished = sum(w.finished for w in used)
    isl = osl = None
    if finished > 0:
        isl = max(1.0, sum(w.prompt_tokens for w in used) / finished)
        osl = max(1.0, sum(w.generation_tokens for w in used) / finished)
    return Estimate(sum(w.requests for w in used) / seconds, isl, osl, seconds, len(used))


def bucket_up(value: float, step: float) -> float:
    """``value`` rounded up to the next power of ``step`` (0 for 0): inputs that differ by less
    than a step plan the same, and never for less than was measured."""
    if value <= 0:
        return 0.0
    k = math.ceil(math.log(value) / math.log(step) - 1e-6)
    return step**k


def planned_inputs(rate: float, isl: float, osl: float) -> tuple[float, int, int]:
    """What the planner is asked: the rate and lengths rounded up to their buckets."""
    return (
        round(bucket_up(rate, RATE_STEP), 6),
        max(1, math.ceil(bucket_up(isl, LENGTH_STEP) - 1e-6)),
        max(1, math.ceil(bucket_up(osl, LENGTH_STEP) - 1e-6)),
    )
