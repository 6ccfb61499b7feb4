"""Shared pytest setup: quiet TensorFlow, make `import tests.zoo` work however pytest is invoked, and a
derandomized Hypothesis profile for CI."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# CI runs every Hypothesis test on a fixed sequence of examples, so a run is reproducible; elsewhere each run
# explores new examples (and keeps failures in .hypothesis/). Set HYPOTHESIS_PROFILE=ci to reproduce CI locally.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))
