"""Shared fixtures: the shipped model (end-to-end) and a tiny random model on the shipped tokenizer (logic)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[1] / "fim_server" / "models" / "default"


@pytest.fixture(scope="session")
def shipped_model_dir() -> Path:
    return SHIPPED


@pytest.fixture(scope="session")
def tokenizer():
    from fim_server.tokenizer import Tokenizer

    return Tokenizer.from_file(SHIPPED / "tokenizer.json")


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    import torch

    from fim_server.model import PRESETS, FIMDiffusionModel

    torch.manual_seed(0)
    m = FIMDiffusionModel(replace(PRESETS["tiny"], vocab_size=tokenizer.vocab_size))
    m.init_weights(0)
    return m.eval()


@pytest.fixture(scope="session")
def shipped_engine():
    from fim_server.engine import Engine

    eng = Engine.load(SHIPPED)
    yield eng
    eng.close()
