"""Scoring: perturb the live model in place, evaluate it with lm-eval on the support folds, restore, store per-example scores.

May import: the top-level foundations (errors, progress, noise, sizes, population, recipe, amplitudes, model_io), tasks, rewards.
"""
