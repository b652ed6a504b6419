"""The cluster's configuration and deployment files: they load, name real roles, and refuse what cannot run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sct_node.config import NodeConfig, load_config
from sct_node.errors import ConfigError
from sct_node.node.cluster import make_broker
from sct_node.node.service import ROLES, Node

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "cluster"


def test_the_cluster_example_configuration_loads_with_a_broker_and_a_database():
    config = load_config(DEPLOY / "node.toml")
    assert config.cluster.broker_url == "redis://redis:6379/0"
    assert config.cluster.database_url is not None and config.cluster.database_url.startswith("postgresql://")
    assert config.cluster.job_time_limit_s > 600  # above Dramatiq's default of 10 minutes


def test_compose_and_systemd_units_run_only_roles_that_exist():
    texts = [(path, path.read_text()) for path in sorted(DEPLOY.iterdir()) if path.suffix in (".yaml", ".service")]
    assert len(texts) == 4
    named = set()
    for path, text in texts:
        for found in re.findall(r'--role"?,? "?([a-z,]+)', text):
            roles = {role for role in found.split(",") if role}  # "--role worker, the same ..." in a comment
            named.update(roles)
            assert roles <= set(ROLES), f"{path.name}: unknown role in {found}"
    assert named == {"receiver", "worker", "dispatcher"}
    compose = (DEPLOY / "compose.yaml").read_text()
    assert '"--appendonly", "yes", "--appendfsync", "everysec"' in compose  # the durability docs/cluster.md names


def test_roles_without_a_broker_or_unknown_roles_are_refused(tmp_path):
    config = NodeConfig.model_validate({"storage": {"spool_dir": str(tmp_path / "spool")}})
    with pytest.raises(ConfigError, match="broker_url is needed"):
        make_broker(config.cluster)
    with pytest.raises(ConfigError, match="roles: one of all"):
        Node(config, roles=("receiver", "gpu"))
    with pytest.raises(ConfigError, match="roles: one of all"):
        Node(config, roles=("all", "worker"))
