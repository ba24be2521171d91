"""Per-sample weights, unbiased estimates and their uncertainty.

With a sample rate ``R > 1`` an allocation of ``s`` bytes is sampled with probability
``p = 1 - exp(-s/R)``; each sample stands for ``w = 1/p`` allocations and ``s*w`` bytes, so
sums of per-sample values are unbiased (Horvitz-Thompson). With ``R <= 1`` every allocation
is traced and every weight is exactly 1. Pure functions of numbers, no dependencies.
"""

from __future__ import annotations

import math

__all__ = [
    "approx_variances",
    "confidence_interval",
    "count_variance",
    "estimated_count",
    "estimated_size",
    "group_relative_error",
    "relative_error",
    "relative_error_from_variance",
    "sampling_probability",
    "size_variance",
    "weight",
]


def sampling_probability(size: int, sample_rate: int) -> float:
    """Probability that an allocation of ``size`` bytes is sampled at ``sample_rate``.

    1.0 when ``sample_rate <= 1`` (exact mode). A sampled zero-byte allocation is taken as
    certain (probability 1, weight 1), as the C sampler weighs it (``mp_weight``): it holds
    no bytes, and counting it once never inflates a count by ``sample_rate``.
    """
    if sample_rate <= 1:
        return 1.0
    if size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    if size == 0:
        return 1.0
    # -expm1(-x) keeps full precision for tiny x = size/rate, where 1 - exp(-x) would not.
    return -math.expm1(-size / sample_rate)


def weight(size: int, sample_rate: int) -> float:
    """How many allocations one sampled allocation of ``size`` bytes stands for: ``1/p``.

    Exactly 1.0 when ``sample_rate <= 1``; about ``sample_rate/size`` for small sizes and
    tending to 1 for sizes much larger than the rate. Size 0 weighs 1.0, as in the C core.
    """
    return 1.0 / sampling_probability(size, sample_rate)


def estimated_size(size: int, sample_rate: int) -> float:
    """Bytes one sample of ``size`` bytes stands for: ``size * weight`` (0 for size 0)."""
    return size * weight(size, sample_rate)


def estimated_count(size: int, sample_rate: int) -> float:
    """Allocations one sample of ``size`` bytes stands for: its weight."""
    return weight(size, sample_rate)


def size_variance(size: int, sample_rate: int) -> float:
    """This sample's term of the estimated variance of a byte total: ``s**2 * w * (w-1)``.

    Summed over the samples of a group it is an unbiased estimate of the variance of the
    group's estimated bytes (Horvitz-Thompson with independent, Poisson sampling). It is 0
    in exact mode and for allocations far larger than the rate, which are always sampled.
    """
    w = weight(size, sample_rate)
    return float(size) * size * w * (w - 1.0)


def count_variance(size: int, sample_rate: int) -> float:
    """This sample's term of the estimated variance of an allocation count: ``w * (w-1)``.

    The count analogue of :func:`size_variance` (same assumptions); 0 in exact mode.
    """
    w = weight(size, sample_rate)
    return w * (w - 1.0)


def approx_variances(count_estimate: float, size_estimate: float,
                     sample_rate: int) -> tuple[float, float]:
    """Approximate ``(size variance, count variance)`` of totals known only by their
    estimates (allocation totals without per-sample sizes).

    Assumes all ``count_estimate`` allocations had the average size, sampled with
    probability ``p``: the count variance is then ``count * (1-p)/p`` and the size variance
    that times the average size squared; the square of :func:`group_relative_error`
    times the size. ``inf`` for a positive size with no count; 0 in exact mode.
    """
    if sample_rate <= 1:
        return 0.0, 0.0
    if count_estimate <= 0.0:
        return (math.inf, math.inf) if size_estimate > 0 else (0.0, 0.0)
    average = max(0.0, size_estimate) / count_estimate
    p = sampling_probability(average, sample_rate)
    count_var = count_estimate * (1.0 - p) / p
    return count_var * average * average, count_var


def relative_error(samples: int, exact: bool) -> float:
    """Rough relative standard error of an estimate backed by ``samples`` samples.

    ``0.0`` when ``exact``; ``inf`` with no samples; otherwise ``1/sqrt(samples)``, which is
    right for allocations much smaller than the rate (their sample count is close to
    Poisson) and too pessimistic for large ones; prefer
    :func:`relative_error_from_variance` when the per-sample sizes are known.
    """
    if exact:
        return 0.0
    if samples <= 0:
        return math.inf
    return 1.0 / math.sqrt(samples)


def relative_error_from_variance(variance: float, estimate: float) -> float:
    """``sqrt(variance)/estimate``: the relative standard error of an estimate.

    ``variance`` is the sum of :func:`size_variance` over the group's samples. Returns 0.0
    when the variance is 0 and ``inf`` when the estimate is 0 but the variance is not.
    """
    if variance <= 0.0:
        return 0.0
    if estimate <= 0.0:
        return math.inf
    return math.sqrt(variance) / estimate


def group_relative_error(count_estimate: float, size_estimate: float, sample_rate: int) -> float:
    """Approximate relative error of a byte total known only by its two estimates.

    For totals that carry no per-sample sizes (allocation totals since start), assume all
    ``count_estimate`` allocations had the average size ``a = size/count``, sampled with
    ``p = 1 - exp(-a/R)``; then the relative error is ``sqrt((1-p) / (p * count))``. That is
    ``1/sqrt(samples)`` for small allocations and 0 for huge ones; for groups of mixed sizes
    it is an approximation (it underestimates the error somewhat).
    """
    if sample_rate <= 1:
        return 0.0
    if count_estimate <= 0.0:
        return math.inf
    p = sampling_probability(max(0.0, size_estimate) / count_estimate, sample_rate)
    return math.sqrt((1.0 - p) / (p * count_estimate))


def confidence_interval(
    estimate: float, rel_error: float, level: float = 0.95, *, clip: bool = True
) -> tuple[float, float]:
    """A ``level`` confidence interval around ``estimate`` with relative error ``rel_error``.

    Normal approximation: ``estimate * (1 -/+ z * rel_error)`` with ``z`` the two-sided
    quantile of ``level`` (1.96 for 95%). Good once a group has a dozen samples or more;
    with fewer the true distribution is skewed and the interval is only indicative.
    ``clip`` keeps the lower bound at 0 or above (sizes and counts are never negative).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be between 0 and 1 (exclusive), got {level!r}")
    if rel_error < 0:
        raise ValueError(f"rel_error must not be negative, got {rel_error!r}")
    if math.isinf(rel_error):
        low, high = -math.inf, math.inf
    else:
        from statistics import NormalDist  # not at import: start() needs no statistics

        half = abs(estimate) * rel_error * NormalDist().inv_cdf(0.5 + level / 2.0)
        low, high = estimate - half, estimate + half
    if clip:
        low = max(low, 0.0)
    return low, high
