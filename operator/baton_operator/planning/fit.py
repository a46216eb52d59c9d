"""Cost functions fitted to a profile's measured points (pure Python: no numpy in the operator image).

Three shapes, each chosen so that it reproduces the measured figures exactly where it can:

* :class:`Piecewise` — piecewise-linear interpolation through sorted points, with the end
  segments extended linearly beyond the measured range. With one point it is either
  proportional (``y = y0 * x / x0``: prefill, compute-bound) or constant (decode batch/context).
* :class:`DecodeSurface` — decode step time over (batch, mean context). Interpolation rather
  than a least-squares fit of ``a + b*batch + c*batch*context``: real step times are not linear
  in batch (kernel choice, clocks, CUDA graphs — the H100 profile's batch 32 step is *faster*
  than batch 8), so a global linear fit would miss every measured point, and profiles often
  measure a single context, where ``b`` and ``c`` of that fit cannot be told apart. The surface
  is piecewise-linear in batch at each measured context and linear in context between (and
  beyond) measured contexts: bilinear on an irregular grid, exact at every measured point. With
  one measured context the step time does not depend on context (a known blind spot, which the
  planner reports as a warning when a workload's context is far from the measured one).
* :class:`Linear` — least squares ``a + b*x`` (KV transfer: a fixed latency plus bytes over
  bandwidth); one point (or one distinct x) gives ``b = y0/x0, a = 0``.

Every function clamps its result to at least :data:`FLOOR` seconds: an extrapolated line may
cross zero, and a zero-cost step would stall a discrete-event simulation.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

FLOOR = 1e-6  # seconds: the least any fitted cost returns


@dataclass(frozen=True)
class Piecewise:
    """y(x) through ``points`` (distinct x), linear between them and beyond the end segments."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    single: str = "constant"  # with one point: "constant" or "proportional"

    @classmethod
    def through(cls, points: Iterable[tuple[float, float]], single: str = "constant") -> Piecewise:
        pts = sorted(points)
        if not pts:
            raise ValueError("a piecewise-linear fit needs at least one point")
        if len({x for x, _ in pts}) != len(pts):
            raise ValueError("a piecewise-linear fit needs distinct x values")
        return cls(tuple(float(x) for x, _ in pts), tuple(float(y) for _, y in pts), single)

    def __call__(self, x: float) -> float:
        xs, ys = self.xs, self.ys
        if len(xs) == 1:
            y = ys[0] * x / xs[0] if self.single == "proportional" else ys[0]
            return max(FLOOR, y)
        i = min(max(bisect_right(xs, x) - 1, 0), len(xs) - 2)
        x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
        return max(FLOOR, y0 + (y1 - y0) * (x - x0) / (x1 - x0))

    @property
    def span(self) -> tuple[float, float]:
        return self.xs[0], self.xs[-1]


@dataclass(frozen=True)
class DecodeSurface:
    """Decode step seconds over (batch, mean context): one :class:`Piecewise` over batch per
    measured context, linear in context between them (see the module docstring)."""

    contexts: tuple[float, ...]
    by_context: tuple[Piecewise, ...]

    @classmethod
    def through(cls, points: Iterable[tuple[int, int, float]]) -> DecodeSurface:
        """From (batch, context, seconds) points."""
        rows: dict[float, list[tuple[float, float]]] = {}
        for batch, context, seconds in points:
            rows.setdefault(float(context), []).append((float(batch), float(seconds)))
        if not rows:
            raise ValueError("a decode surface needs at least one point")
        contexts = tuple(sorted(rows))
        return cls(contexts, tuple(Piecewise.through(rows[c]) for c in contexts))

    def __call__(self, batch: float, context: float) -> float:
        cs, fs = self.contexts, self.by_context
        if len(cs) == 1:
            return fs[0](batch)
        i = min(max(bisect_right(cs, context) - 1, 0), len(cs) - 2)
        c0, c1 = cs[i], cs[i + 1]
        y0, y1 = fs[i](batch), fs[i + 1](batch)
        return max(FLOOR, y0 + (y1 - y0) * (context - c0) / (c1 - c0))

    @property
    def batch_span(self) -> tuple[float, float]:
        return min(f.xs[0] for f in self.by_context), max(f.xs[-1] for f in self.by_context)

    @property
    def context_span(self) -> tuple[float, float]:
        return self.contexts[0], self.contexts[-1]


@dataclass(frozen=True)
class Linear:
    """y = intercept + slope * x, by least squares."""

    intercept: float
    slope: float

    @classmethod
    def fit(cls, points: Iterable[tuple[float, float]]) -> Linear:
        pts = [(float(x), float(y)) for x, y in points]
        if not pts:
            raise ValueError("a linear fit needs at least one point")
        n = len(pts)
        mx = sum(x for x, _ in pts) / n
        my = sum(y for _, y in pts) / n
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        if sxx == 0.0:  # one distinct x: through the origin
            return cls(0.0, my / mx)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        return cls(my - slope * mx, slope)

    def __call__(self, x: float) -> float:
        return max(FLOOR, self.intercept + self.slope * x)
