"""Workloads for the simulator: arrivals, prompt and output lengths, prefix sharing (pure, seeded).

Arrivals are a renewal process with gamma-distributed gaps of shape ``burstiness`` (1 = Poisson;
below 1 burstier, above 1 more regular), as `baton bench serve` sends them. Gaps are drawn at
rate 1 and divided by the rate, so two workloads that differ only in rate see the same requests
at proportionally scaled times (common random numbers): comparisons across rates, and the
planner's bisection for the highest sustainable rate, are not blurred by resampling noise.
Each quantity (gaps, prompt lengths, output lengths) has its own random stream derived from the
seed, so changing one distribution does not reshuffle the others.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

KINDS = ("fixed", "uniform", "lognormal")


@dataclass(frozen=True)
class LengthDist:
    """Token lengths: fixed ``mean``; uniform over [low, high]; or lognormal with mean ``mean``
    and ``sigma`` (of the underlying normal). Samples are rounded to integers >= 1."""

    kind: str = "fixed"
    mean: float = 0.0
    low: int = 0
    high: int = 0
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"length distribution must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "uniform" and not 1 <= self.low <= self.high:
            raise ValueError(f"uniform lengths need 1 <= low <= high, got {self.low}-{self.high}")
        if self.kind != "uniform" and self.mean < 1:
            raise ValueError(f"mean length must be >= 1, got {self.mean}")
        if self.kind == "lognormal" and self.sigma < 0:
            raise ValueError(f"lognormal sigma must be >= 0, got {self.sigma}")

    @classmethod
    def fixed(cls, n: float) -> LengthDist:
        return cls("fixed", mean=n)

    @classmethod
    def uniform(cls, low: int, high: int) -> LengthDist:
        return cls("uniform", mean=(low + high) / 2, low=low, high=high)

    @classmethod
    def lognormal(cls, mean: float, sigma: float) -> LengthDist:
        return cls("lognormal", mean=mean, sigma=sigma)

    @classmethod
    def parse(cls, text: str) -> LengthDist:
        """``N`` (fixed), ``A-B`` (uniform) or ``lognormal:MEAN[:SIGMA]`` (sigma 0.5 by default)."""
        t = text.strip()
        try:
            if t.startswith("lognormal:"):
                parts = t.split(":")[1:]
                if len(parts) not in (1, 2):
                    raise ValueError
                return cls.lognormal(float(parts[0]), float(parts[1]) if len(parts) == 2 else 0.5)
            if "-" in t:
                low, high = t.split("-")
                return cls.uniform(int(low), int(high))
            return cls.fixed(float(t))
        except ValueError as e:
            detail = f": {e}" if str(e) else ""
            raise ValueError(f"{text!r} is not a length (N, A-B or lognormal:MEAN[:SIGMA]){detail}") from None

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return max(1, round(self.mean))
        if self.kind == "uniform":
            return rng.randint(self.low, self.high)
        mu = math.log(self.mean) - self.sigma**2 / 2  # so that the mean is self.mean
        return max(1, round(rng.lognormvariate(mu, self.sigma)))

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.mean:g}"
        if self.kind == "uniform":
            return f"uniform {self.low}-{self.high}"
        return f"lognormal mean {self.mean:g} sigma {self.sigma:g}"


@dataclass(frozen=True)
class Requests:
    """A sampled workload: parallel lists, one entry per request, arrivals in order."""

    arrival: list[float]
    prompt_tokens: list[int]  # the prompt's length (what decode attends and the KV handoff moves)
    prefill_tokens: list[int]  # what prefill computes: the prompt less its cached prefix (>= 1)
    output_tokens: list[int]

    def __len__(self) -> int:
        return len(self.arrival)


@dataclass(frozen=True)
class Workload:
    """What arrives: ``rate`` req/s with gamma(``burstiness``) gaps, for ``num_requests`` requests
    (or until ``duration_s`` when that is set), with prompt lengths ``isl`` and output lengths
    ``osl``; ``prefix_cached`` of each prompt's tokens is already cached and not prefilled."""

    rate: float
    isl: LengthDist
    osl: LengthDist
    num_requests: int = 2000
    duration_s: float | None = None
    burstiness: float = 1.0
    prefix_cached: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 req/s, got {self.rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness (gamma shape) must be > 0, got {self.burstiness}")
        if not 0 <= self.prefix_cached < 1:
            raise ValueError(f"prefix_cached must be in [0, 1), got {self.prefix_cached}")
        if self.duration_s is None and self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")

    def sample(self) -> Requests:
        gaps = random.Random(f"{self.seed}:arrivals")
        isl_rng = random.Random(f"{self.seed}:isl")
        osl_rng = random.Random(f"{self.seed}:osl")
        k = self.burstiness
        arrival: list[float] = []
        t = 0.0
        while True:
            if self.duration_s is None and len(arrival) >= self.num_requests:
                break
            t += gaps.gammavariate(k, 1.0 / k) / self.rate
            if self.duration_s is not None and t > self.duration_s:
                break
            arrival.append(t)
        n = len(arrival)
        prompt = [self.isl.sample(isl_rng) for _ in range(n)]
        prefill = [max(1, p - int(p * self.prefix_cached)) for p in prompt]
        output = [self.osl.sample(osl_rng) for _ in range(n)]
        return Requests(arrival, prompt, prefill, output)

    def describe(self) -> str:
        arrivals = "Poisson" if self.burstiness == 1 else f"gamma shape {self.burstiness:g}"
        size = f"{self.duration_s:g} s" if self.duration_s is not None else f"{self.num_requests} requests"
        cached = f", {self.prefix_cached:.0%} of prompt tokens cached" if self.prefix_cached else ""
        return (
            f"{self.rate:g} req/s ({arrivals}), {size}, ISL {self.isl.describe()}, "
            f"OSL {self.osl.describe()}{cached}"
        )
