import math

import numpy as np
import pytest

from corpmerge.gate.paired import paired_interval, paired_stats, pick_multiplier


def test_lcb_formula_by_hand():
    base = [1, 0, 0, 1, 0, 1, 0, 0]
    cand = [1, 1, 1, 0, 0, 1, 1, 0]
    s = paired_stats(base, cand, z=1.645, regression_penalty=2.0)
    d = np.array(cand) - np.array(base)
    assert (s.fixes, s.regressions, s.n) == (3, 1, 8)
    assert s.constructive_score == pytest.approx((3 - 2 * 1) / 8)
    assert s.lcb == pytest.approx(d.mean() - 1.645 * d.std(ddof=1) / math.sqrt(8))
    assert s.accuracy == pytest.approx(5 / 8) and s.base_accuracy == pytest.approx(3 / 8)
    assert s.passes == (s.lcb > 0)


def test_nothing_beats_base_means_no_pass():
    base = [1, 0, 1, 0]
    assert not paired_stats(base, base, 1.645, 2.0).passes  # identical: S = 0, LCB = 0
    assert not paired_stats(base, [0, 0, 1, 0], 0.0, 0.0).passes  # only a regression
    # fixes and regressions balanced under the penalty: S ≤ 0 although the mean is positive
    mixed = paired_stats([0, 0, 0, 1, 1], [1, 1, 0, 0, 0], z=0.0, regression_penalty=2.0)
    assert mixed.mean_diff == 0 and not mixed.passes


def test_regression_penalty_can_block_a_positive_mean():
    s = paired_stats([0] * 6 + [1] * 2, [1] * 5 + [0] + [0] * 2, z=0.0, regression_penalty=3.0)
    assert s.mean_diff > 0 and s.lcb > 0 and s.constructive_score < 0 and not s.passes


def test_probe_picks_the_largest_passing_multiplier():
    assert pick_multiplier({0.5: 0.01, 1.0: 0.02, 2.0: 0.005, 4.0: -0.1}) == 2.0
    assert pick_multiplier({0.5: -0.01, 1.0: 0.0}) is None


def test_paired_interval_is_symmetric_around_the_mean():
    mean, low, high = paired_interval([0, 1, 0, 1, 0], [1, 1, 0, 1, 1])
    assert mean == pytest.approx(0.4) and (mean - low) == pytest.approx(high - mean)
