"""The pieces that need no cluster: engine entries, the [scale] section, the per-engine breaker."""

from __future__ import annotations

import tomllib

import pytest

from gymbox.config import from_mapping
from gymbox.distributed import EngineBreaker, EngineConfig, ScaleConfig, TLSFiles
from gymbox.distributed.engines import check_engines, discover_engines
from gymbox.runtime.breaker import Backoff
from gymbox.runtime.errors import ConfigurationError, EngineUnavailable

SCALE_TOML = """
[scale]
ray_address = "127.0.0.1:6379"
[[scale.engines]]
name = "e1"
resource = "gymbox_engine_e1"
[[scale.engines]]
name = "remote"
docker_host = "tcp://10.0.0.7:2376"
tls = { ca_cert = "/ca.pem", client_cert = "/cert.pem", client_key = "/key.pem" }
pool_size = 8
"""


def test_a_scale_section_reads_into_typed_engines():
    scale = from_mapping(ScaleConfig, tomllib.loads(SCALE_TOML)["scale"])
    assert scale.enabled
    assert [e.name for e in scale.engines] == ["e1", "remote"]
    assert scale.engines[1].tls == TLSFiles("/ca.pem", "/cert.pem", "/key.pem")
    assert scale.engines[1].pool_size == 8
    assert not ScaleConfig().enabled


def test_bad_engine_entries_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="unknown key"):
        from_mapping(ScaleConfig, {"engines": [{"name": "e1", "host": "unix:///x"}]})
    with pytest.raises(ConfigurationError, match="TLS applies to tcp"):
        from_mapping(ScaleConfig, {"engines": [{"name": "e1", "docker_host": "unix:///x",
                                                "tls": {"ca_cert": "/ca.pem"}}]})
    with pytest.raises(ValueError, match="client_cert and client_key"):
        TLSFiles(client_cert="/cert.pem")
    with pytest.raises(ValueError, match="engine name"):
        EngineConfig("a b")
    with pytest.raises(ConfigurationError, match="unique"):
        check_engines([EngineConfig("a"), EngineConfig("a")])
    with pytest.raises(ConfigurationError, match="at least one engine"):
        check_engines([])


def test_an_unreachable_engine_is_named_and_a_missing_tls_file_is_a_config_error(tmp_path):
    with pytest.raises(EngineUnavailable, match="engine far: no Docker engine answers"):
        EngineConfig("far", docker_host=f"unix://{tmp_path}/nothing.sock").connect(timeout=2)
    tls = TLSFiles(ca_cert=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ConfigurationError, match=r"missing-ca\.pem does not exist"):
        EngineConfig("tls", docker_host="tcp://127.0.0.1:1", tls=tls).connect(timeout=2)


def test_engines_are_discovered_from_node_resources():
    nodes = [{"Alive": True, "Resources": {"CPU": 1.0, "gymbox_engine_b": 1.0}},
             {"Alive": False, "Resources": {"gymbox_engine_dead": 1.0}},
             {"Alive": True, "Resources": {"gymbox_engine_a": 1.0, "memory": 1e9}}]
    found = discover_engines(nodes, pool_size=3)
    assert [(e.name, e.resource, e.pool_size) for e in found] == [
        ("b", "gymbox_engine_b", 3), ("a", "gymbox_engine_a", 3)]


def test_the_engine_breaker_drains_then_probes_then_drains_longer():
    breaker = EngineBreaker(trip_after=2, backoff=Backoff(initial_s=2.0, factor=2.0, max_s=60))
    failure = EngineUnavailable("down")
    breaker.record(failure, now=0.0)
    assert breaker.admits(now=0.0)  # one failure proves nothing
    breaker.record(None, now=0.0)
    breaker.record(failure, now=0.0)
    assert breaker.admits(now=0.0)  # a success in between resets the streak
    breaker.record(failure, now=0.0)
    assert breaker.state(now=1.9) == "draining" and breaker.admits(now=2.1)
    breaker.record(failure, now=2.1)  # the probe after the cool-down fails: longer drain
    assert breaker.state(now=2.1 + 3.9) == "draining" and breaker.admits(now=2.1 + 4.1)
    breaker.record(None, now=6.5)
    assert breaker.admits(now=6.5) and breaker.failures_in_row == 0
    breaker.kill("its worker died")
    assert breaker.state(now=1e9) == "dead"
