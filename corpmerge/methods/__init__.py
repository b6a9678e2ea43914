"""Merge methods: a rewarded population (amplitude cloud) → one update. Importing this package registers every built-in method.

May import: amplitudes, noise, population, errors (never scoring: a method sees rewards, not models).
"""

from corpmerge.methods import best, corp, es, reward_avg, ties, topk_subspace  # noqa: F401  (registration)
from corpmerge.methods.registry import MergeMethod, MergeResult, MethodParams, get_method, merge_method, method_names

__all__ = ["MergeMethod", "MergeResult", "MethodParams", "get_method", "merge_method", "method_names"]
