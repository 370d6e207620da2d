"""Fixtures shared by several test files.

The suite's rule (tests/README.md): every fast path is checked against a slow reference written
independently in the test; every property test has a control in the same file that builds the
broken variant and shows the check fails on it; golden numbers appear only as regression pins,
each with a comment naming its origin.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (mixed precision, gradient accumulation); every Run
    makes its own Accelerator, so start and end each test from accelerate's blank state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
