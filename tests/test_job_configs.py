"""Every shipped config parses and validates (paths that only exist on a real machine are overridden)."""

from pathlib import Path

import pytest

from rayseg.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_is_valid(path, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    text = path.read_text()
    overrides = []
    if "kind: voc" in text:
        overrides.append(f"data.root={tmp_path}")
    if "init_weights: rayseg_runs" in text:
        overrides.append(f"model.init_weights={weights}")
    cfg = load_config(path, overrides)
    assert cfg.train.epochs >= 1


def test_there_are_configs():
    assert len(CONFIGS) >= 3
