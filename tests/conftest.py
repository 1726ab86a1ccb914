"""Shared fixtures: tiny models with known shapes, built fast, and quiet TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
