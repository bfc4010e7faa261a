"""deploy/ray-cluster.yaml against Ray's own cluster-launcher schema (the one `ray up` checks), and
the settings filmstyle relies on: token authentication on every node, the token copied to them, no
Ray Client port (the project joins by GCS address, see tasks/ray_connect.py)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "ray-cluster.yaml"


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_the_cluster_config_passes_rays_schema(config):
    _validate(config)
    wrong = {**config, "head_node": {"InstanceType": "m6i.2xlarge"}}  # a key `ray up` no longer takes
    with pytest.raises(Exception, match="head_node"):
        _validate(wrong)


def test_every_node_starts_ray_in_token_mode_with_the_token(config):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert "10001" not in CONFIG.read_text() and "ray-client-server-port" not in CONFIG.read_text()
