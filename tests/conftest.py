"""Shared fixtures: tiny LLaVA models built from configs (see helpers.py)."""

from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(1)  # the tests use tiny models: one thread is faster than two fighting
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
