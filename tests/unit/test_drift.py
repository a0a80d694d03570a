"""libs.drift: groups, summaries, the reference round trip, PSI on clean vs shifted rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from libs.drift import (
    BINS,
    Reference,
    build_reference,
    class_psi,
    feature_groups,
    summarize_rows,
    summary_names,
)
from tests.support.monitor_data import fashion_like


def test_groups_cover_every_feature_contiguously() -> None:
    for n in (1, 7, 16, 17, 784, 1000):
        groups = feature_groups(n)
        assert groups[0][0] == 0 and groups[-1][1] == n
        assert all(a < b for a, b in groups)
        assert all(groups[i][1] == groups[i + 1][0] for i in range(len(groups) - 1))
        assert len(groups) == min(16, n)
        assert max(b - a for a, b in groups) - min(b - a for a, b in groups) <= 1
    with pytest.raises(ValueError):
        feature_groups(0)


def test_summaries_are_group_means_then_stds() -> None:
    rows = np.arange(2 * 10, dtype=np.float32).reshape(2, 10)
    groups = feature_groups(10, max_groups=3)  # uneven sizes: 3, 4, 3
    s = summarize_rows(rows, groups)
    assert s.shape == (2, 6)
    for i, (a, b) in enumerate(groups):
        np.testing.assert_allclose(s[:, i], rows[:, a:b].mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(s[:, 3 + i], rows[:, a:b].std(axis=1), rtol=1e-6)
    assert summary_names(3) == ["mean[0]", "mean[1]", "mean[2]", "std[0]", "std[1]", "std[2]"]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int64])
def test_summaries_match_numpy_for_images_of_any_dtype(dtype: type) -> None:
    rng = np.random.default_rng(3)
    rows = rng.integers(0, 256, (5, 28, 28)).astype(dtype)
    rows[:, 0, :] = rows[0, 0, 0]  # a constant band: its std is exactly 0
    groups = feature_groups(784)
    s = summarize_rows(rows, groups)
    blocks = rows.reshape(5, 16, 49).astype(np.float64)
    assert s.dtype == np.float32 and s.shape == (5, 32)
    np.testing.assert_allclose(s[:, :16], blocks.mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(s[:, 16:], blocks.std(axis=2), rtol=1e-6, atol=1e-6)
    constant = rows.reshape(5, -1)[:, :28]
    assert (constant == constant[0, 0]).all() and s[0, 16] > 0  # the band spans group 0
    big = 1e6 + rng.random((3, 8))  # large offsets: no digits lost to cancellation
    np.testing.assert_allclose(
        summarize_rows(big, feature_groups(8, max_groups=2))[:, 2:],
        np.stack([big[:, :4].std(axis=1), big[:, 4:].std(axis=1)], axis=1),
        rtol=1e-4,
    )
    np.testing.assert_array_equal(
        summarize_rows(np.full((2, 98), 7.0), feature_groups(98))[:, 16:], 0
    )
    # a NaN (binary tensors can carry one) gives NaN summaries of its group, as numpy would
    nan = summarize_rows(np.array([[1.0, np.nan, 2.0, 3.0]]), [(0, 2), (2, 4)])
    assert np.isnan(nan[0, [0, 2]]).all() and nan[0, 1] == 2.5 and nan[0, 3] == 0.5


def test_reference_round_trips_and_refuses_other_documents() -> None:
    x, y = fashion_like(2000, seed=1)
    ref = build_reference(x, y, 10)
    again = Reference.from_json(ref.to_json())
    assert again == ref
    assert ref.rows == 2000 and len(ref.edges) == 32
    assert all(len(s) == len(e) + 1 <= BINS for e, s in zip(ref.edges, ref.shares, strict=True))
    assert ref.class_prior is not None and abs(sum(ref.class_prior) - 1) < 1e-9
    with pytest.raises(ValueError, match="format"):
        Reference.from_json(b'{"format": "other"}')


def test_psi_is_small_on_clean_rows_and_large_on_inverted_or_noised_rows() -> None:
    x, y = fashion_like(5000, seed=1)
    ref = build_reference(x, y, 10)
    clean, _ = fashion_like(1000, seed=2)
    inverted = 255 - fashion_like(1000, seed=3)[0]
    rng = np.random.default_rng(4)
    noised = np.clip(fashion_like(1000, seed=5)[0] + rng.normal(0, 40, (1000, 28, 28)), 0, 255)

    def score(rows: np.ndarray) -> float:
        return float(ref.psi(ref.bin_counts(summarize_rows(rows, ref.groups))).mean())

    assert score(clean) < 0.05
    assert score(inverted) > 1.0
    assert score(noised) > 1.0


def test_class_psi() -> None:
    assert class_psi([100, 100], np.array([0, 1] * 50)) < 1e-6
    assert class_psi([100, 100], np.array([0] * 100)) > 1.0
    with pytest.raises(ValueError):
        class_psi([0, 0], np.array([0]))


def test_summaries_work_where_numba_can_write_no_cache() -> None:
    """A read-only install with no user cache: compiled in the process, not cached."""
    code = (
        "import numba.core.caching as c; c.CacheImpl._locator_classes = []\n"
        "import numpy as np, libs.drift as d\n"
        "s = d.summarize_rows(np.full((2, 98), 3.0), d.feature_groups(98))\n"
        "assert (s[:, :16] == 3).all() and (s[:, 16:] == 0).all()\n"
        "print(type(d._compiled_summarize()._cache).__name__)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "NullCache"
