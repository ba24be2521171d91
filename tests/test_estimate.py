"""Per-sample weights, estimates and uncertainty (mprofile_ipy.estimate)."""

from __future__ import annotations

import math
import random

import pytest

from mprofile_ipy import estimate as est


@pytest.mark.parametrize("rate", [0, 1, -5])
def test_exact_mode_weights_are_one(rate):
    for size in (0, 1, 17, 10**9):
        assert est.weight(size, rate) == 1.0
        assert est.sampling_probability(size, rate) == 1.0
        assert est.estimated_size(size, rate) == float(size)
        assert est.estimated_count(size, rate) == 1.0
        assert est.size_variance(size, rate) == 0.0


def test_weight_hand_computed():
    # p = 1 - exp(-100/1000) = 0.0951625819640404; w = 1/p
    assert est.sampling_probability(100, 1000) == pytest.approx(0.0951625819640404, rel=1e-14)
    assert est.weight(100, 1000) == pytest.approx(10.508331944775, rel=1e-12)
    assert est.weight(1000, 1000) == pytest.approx(1 / (1 - math.exp(-1)), rel=1e-14)
    assert est.estimated_size(1000, 1000) == pytest.approx(1581.9767068693265, rel=1e-12)
    assert est.estimated_count(100, 1000) == est.weight(100, 1000)


def test_weight_is_stable_for_tiny_sizes():
    # 1 - exp(-x) loses everything for x ~ 1e-13; -expm1(-x) keeps full precision.
    rate = 2**43
    assert est.weight(1, rate) == pytest.approx(rate + 0.5, rel=1e-12)
    assert est.estimated_size(1, rate) == pytest.approx(rate, rel=1e-12)


def test_weight_tends_to_one_for_huge_sizes():
    assert est.weight(100 * 4096, 4096) == 1.0
    assert est.size_variance(100 * 4096, 4096) == 0.0
    assert 1.0 < est.weight(4096, 4096) < 2.0


def test_size_zero_weighs_one_as_in_the_c_sampler():
    # native/sampler.c mp_weight(): a zero-byte block stands for itself only.
    assert est.weight(0, 1000) == 1.0 and est.sampling_probability(0, 1000) == 1.0
    assert est.count_variance(0, 1000) == 0.0
    assert est.estimated_size(0, 1000) == 0.0
    assert est.size_variance(0, 1000) == 0.0


def test_negative_size_rejected():
    with pytest.raises(ValueError, match="negative"):
        est.weight(-1, 1000)


def test_size_variance_hand_computed():
    w = 1 / (1 - math.exp(-0.1))
    assert est.size_variance(100, 1000) == pytest.approx(100 * 100 * w * (w - 1), rel=1e-12)


def test_relative_error():
    assert est.relative_error(0, exact=True) == 0.0
    assert est.relative_error(100, exact=True) == 0.0
    assert est.relative_error(100, exact=False) == pytest.approx(0.1)
    assert est.relative_error(4, exact=False) == pytest.approx(0.5)
    assert est.relative_error(0, exact=False) == math.inf


def test_relative_error_from_variance():
    assert est.relative_error_from_variance(0.0, 10.0) == 0.0
    assert est.relative_error_from_variance(0.0, 0.0) == 0.0
    assert est.relative_error_from_variance(400.0, 100.0) == pytest.approx(0.2)
    assert est.relative_error_from_variance(1.0, 0.0) == math.inf


def test_small_allocations_error_is_one_over_sqrt_samples():
    # n samples of tiny allocations: the variance-based error tends to 1/sqrt(n).
    rate, n = 2**20, 25
    size_total = n * est.estimated_size(8, rate)
    variance = n * est.size_variance(8, rate)
    assert est.relative_error_from_variance(variance, size_total) == pytest.approx(
        1 / math.sqrt(n), rel=1e-3
    )


def test_group_relative_error():
    rate = 1000
    assert est.group_relative_error(10.0, 100.0, 1) == 0.0
    assert est.group_relative_error(0.0, 0.0, rate) == math.inf
    # huge allocations are always sampled: no uncertainty
    assert est.group_relative_error(3.0, 3e7, rate) == 0.0
    # tiny ones: about 1/sqrt(expected samples) = 1/sqrt(size/rate)
    assert est.group_relative_error(1e6, 8e6, rate) == pytest.approx(
        1 / math.sqrt(8e6 / rate), rel=1e-2
    )
    # exact formula for a middle case
    p = 1 - math.exp(-0.5)
    assert est.group_relative_error(40.0, 20000.0, rate) == pytest.approx(
        math.sqrt((1 - p) / (p * 40)), rel=1e-12
    )


def test_confidence_interval():
    low, high = est.confidence_interval(1000.0, 0.1)
    assert low == pytest.approx(1000 - 196.0, rel=1e-3)
    assert high == pytest.approx(1000 + 196.0, rel=1e-3)
    low, high = est.confidence_interval(1000.0, 0.1, level=0.6827)
    assert (low, high) == (pytest.approx(900, rel=1e-3), pytest.approx(1100, rel=1e-3))
    assert est.confidence_interval(1000.0, 0.0) == (1000.0, 1000.0)
    assert est.confidence_interval(100.0, 2.0) == (0.0, pytest.approx(100 + 392, rel=1e-3))
    assert est.confidence_interval(100.0, 2.0, clip=False)[0] < 0
    assert est.confidence_interval(100.0, math.inf) == (0.0, math.inf)
    assert est.confidence_interval(0.0, math.inf) == (0.0, math.inf)


@pytest.mark.parametrize("level", [0.0, 1.0, 95, -0.5])
def test_confidence_interval_rejects_bad_level(level):
    with pytest.raises(ValueError, match="level must be between 0 and 1"):
        est.confidence_interval(1.0, 0.1, level)


def test_confidence_interval_rejects_negative_error():
    with pytest.raises(ValueError, match="rel_error"):
        est.confidence_interval(1.0, -0.1)


def test_weights_are_unbiased_per_size():
    # GIVEN allocations of one size sampled with p(size)
    # WHEN each sample counts w = 1/p
    # THEN the estimated count and bytes match the truth within the sampling noise
    rng = random.Random(1234)
    rate, size, n = 4096, 300, 200_000
    p = est.sampling_probability(size, rate)
    sampled = sum(1 for _ in range(n) if rng.random() < p)
    count = sampled * est.weight(size, rate)
    assert count == pytest.approx(n, rel=4 / math.sqrt(n * p))
    assert sampled * est.estimated_size(size, rate) == pytest.approx(n * size, rel=0.03)
