"""Shared test set-up: CPU only, rank promotion is an error (catches silent broadcasting bugs)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
