"""Configuration loading and `ses-relay check-config`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, ses_relay_exe

from relay import config
from relay.errors import ConfigError


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ses_relay_exe(), "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)


def test_the_documented_example_lists_every_key_and_loads(tmp_path: Path) -> None:
    doc = yaml.safe_load((REPO / "config" / "ses-relay.yaml").read_text())
    # Point the TLS files at something that exists; everything else is as documented.
    (tmp_path / "c.pem").write_text("x")
    doc["tls"] = {"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "c.pem")}
    cfg = config.parse(doc, base=tmp_path, environ={})
    assert cfg.delivery.transport == "sesv2"
    assert cfg.queue.max_age == 5 * 86400
    assert cfg.limits.max_message_size == 10 * 1024 * 1024
    assert [lst.port for lst in cfg.listeners] == [587, 465]
    assert cfg.limits.max_recipients == 100
    assert cfg.limits.max_header_size == 256 * 1024
    assert cfg.policy == config.PolicyConfig()
    assert cfg.suppression == config.SuppressionConfig()
    assert cfg.workers == os.cpu_count()  # workers: auto, one per CPU


@pytest.mark.parametrize(("value", "problem"), [
    (0, "workers: must be at least 1"),
    (65, "workers: must be between 1 and 64, or auto (one per CPU)"),
    ("many", "workers: must be an integer"),
])
def test_a_bad_worker_count_is_named(tmp_path: Path, value: object, problem: str) -> None:
    doc = {"hostname": "relay.example.com", "workers": value,
           "listeners": [{"name": "a", "address": "127.0.0.1", "port": 2525, "tls": "none",
                          "auth": "none", "trusted_networks": ["127.0.0.0/8"]}],
           "delivery": {"transport": "outbox"}}
    with pytest.raises(ConfigError) as e:
        config.parse(doc, base=tmp_path, environ={})
    assert problem in e.value.problems


def test_check_config_accepts_a_valid_file(setup) -> None:
    result = check(setup.path)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_port_0_is_any_free_port_but_workers_cannot_share_it(setup) -> None:
    # One process on port 0 (the setup fixture's listeners are): any free port, reported
    # in the started log line. Workers would each get their own: refused, by key path.
    assert check(setup.path).returncode == 0
    setup.doc["workers"] = 2
    setup.doc["listeners"][1]["port"] = 2465
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}  # the first worker's alone
    setup.write()
    result = check(setup.path)
    assert result.returncode == 2
    assert "listeners[0].port: 0 (any free port) cannot be shared by workers: give the port" \
        in result.stderr
    assert "listeners[1]" not in result.stderr and "metrics" not in result.stderr


def test_check_config_lists_every_problem_with_its_key_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "hostname": "relay.example.com",
        "listeners": [{"name": "a", "address": "127.0.0.1", "port": 99999, "tls": "maybe"}],
        "tls": {"cert": str(tmp_path / "missing.pem"), "key": str(tmp_path / "missing.pem")},
        "queue": {"max_age": "soon"},
        "delivery": {"transport": "sesv2"},
        "colour": "blue",
    }))
    result = check(path)
    assert result.returncode == 2
    for expected in ["listeners[0].port: must be between 0 and 65535",
                     "listeners[0].tls: must be one of starttls, implicit, none",
                     "tls.cert: file not found",
                     "queue.max_age: must be a duration",
                     "delivery.region: required for transport sesv2",
                     "colour: unknown key"]:
        assert expected in result.stderr
    assert result.stdout == ""


def test_unreadable_yaml_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("hostname: [unclosed\n")
    result = check(path)
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr and "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_values_expand_environment_variables(tmp_path: Path) -> None:
    raw = {"hostname": "${RELAY_HOST}", "listeners": [
        {"name": "l", "address": "127.0.0.1", "port": 2525, "tls": "none", "auth": "none",
         "trusted_networks": ["127.0.0.0/8"]}],
        "delivery": {"transport": "sesv2", "region": "${REGION:-eu-west-1}"}}
    cfg = config.parse(raw, base=tmp_path, environ={"RELAY_HOST": "mx.example.org"})
    assert cfg.hostname == "mx.example.org"
    assert cfg.delivery.region == "eu-west-1"
    with pytest.raises(ConfigError) as e:
        config.parse(raw, base=tmp_path, environ={})
    assert "hostname: environment variable RELAY_HOST is not set" in e.value.problems


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    raw = {"hostname": "relay.test", "listeners": [
        {"name": "l", "address": "127.0.0.1", "port": 2525, "tls": "none", "auth": "none",
         "trusted_networks": ["127.0.0.1/32"]}],
        "queue": {"directory": "q"}, "delivery": {"transport": "outbox"}}
    cfg = config.parse(raw, base=tmp_path, environ={})
    assert cfg.queue.directory == tmp_path / "q"


@pytest.mark.parametrize(("listener", "problem"), [
    ({"tls": "none", "auth": "required"}, "listeners[0].tls: tls: none would send passwords"),
    ({"tls": "starttls", "auth": "none"}, "listeners[0].auth: auth: none needs trusted_networks"),
])
def test_listener_settings_that_would_open_the_relay_are_refused(
        tmp_path: Path, listener: dict[str, str], problem: str) -> None:
    raw = {"hostname": "relay.test", "delivery": {"transport": "outbox"},
           "listeners": [{"name": "l", "address": "127.0.0.1", "port": 2525, **listener}]}
    with pytest.raises(ConfigError) as e:
        config.parse(raw, base=tmp_path, environ={})
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems


def test_a_value_with_a_newline_is_refused_before_it_reaches_a_header(tmp_path: Path) -> None:
    doc = {"hostname": "relay.example.com\nX-Injected: yes",
           "listeners": [{"name": "a", "address": "127.0.0.1", "port": 2525, "tls": "none",
                          "auth": "none", "trusted_networks": ["127.0.0.0/8"]}],
           "delivery": {"transport": "outbox", "bounce_from": "postmaster@example.com\n"}}
    with pytest.raises(ConfigError) as e:
        config.parse(doc, base=tmp_path, environ={})
    assert "hostname: must not contain control characters (such as a newline)" in \
        e.value.problems
    assert any(p.startswith("delivery.bounce_from: ") for p in e.value.problems)


def test_policy_ses_headers_takes_auto_allow_or_ignore(tmp_path: Path) -> None:
    doc = {"hostname": "relay.example.com",
           "listeners": [{"name": "a", "address": "127.0.0.1", "port": 2525, "tls": "none",
                          "auth": "none", "trusted_networks": ["127.0.0.0/8"]}],
           "delivery": {"transport": "outbox"}, "policy": {"ses_headers": "ignore"}}
    assert config.parse(doc, base=tmp_path, environ={}).policy.ses_headers == "ignore"
    doc["policy"] = {"ses_headers": True}
    with pytest.raises(ConfigError) as e:
        config.parse(doc, base=tmp_path, environ={})
    assert any(p.startswith("policy.ses_headers: ") for p in e.value.problems), \
        e.value.problems



def test_failover_regions_load_in_order_with_their_endpoints(setup) -> None:
    setup.doc["delivery"].update(transport="sesv1", region="us-east-1", failover=[
        {"region": "eu-west-1"}, {"region": "us-west-2", "endpoint_url": "http://127.0.0.1:9"}],
        failover_after=5, failover_probe="2m")
    setup.write()
    delivery = setup.load().delivery
    assert delivery.failover == (config.FailoverRegion("eu-west-1"),
                                 config.FailoverRegion("us-west-2", "http://127.0.0.1:9"))
    assert (delivery.failover_after, delivery.failover_probe) == (5, 120.0)
    assert check(setup.path).returncode == 0


@pytest.mark.parametrize(("nice", "problem"), [
    (-1, "delivery.nice: must be between 0 and 19"),
    (20, "delivery.nice: must be between 0 and 19"),
    ("low", "delivery.nice: must be an integer"),
    (True, "delivery.nice: must be an integer"),
])
def test_check_config_refuses_a_delivery_nice_out_of_range(setup, nice: object,
                                                          problem: str) -> None:
    setup.doc["delivery"]["nice"] = nice
    setup.write()
    result = check(setup.path)
    assert result.returncode == 2
    assert problem in result.stderr, result.stderr


@pytest.mark.parametrize(("delivery", "problem"), [
    ({"transport": "smtp", "failover": [{"region": "eu-west-1"}]},
     "delivery.failover: not supported with transport smtp"),
    ({"failover": [{"region": "eu-west-1"}, {"region": "eu-west-1"}]},
     "delivery.failover[1]: region eu-west-1 (with this endpoint_url) is listed twice"),
    ({"failover": [{"region": "us-east-1"}]}, "delivery.failover[0]: region us-east-1"),
    ({"failover": [{"endpoint_url": "http://127.0.0.1:9"}]},
     "delivery.failover[0].region: required"),
    ({"failover": [{"region": "Europe"}]},
     "delivery.failover[0].region: 'Europe' is not an AWS region name"),
    ({"failover": {"region": "eu-west-1"}}, "delivery.failover: must be a list"),
    ({"failover": [{"region": "eu-west-1", "weight": 2}]},
     "delivery.failover[0].weight: unknown key"),
    ({"failover_after": 0}, "delivery.failover_after: must be at least 1"),
    ({"region": "us-east"}, "delivery.region: 'us-east' is not an AWS region name"),
])
def test_check_config_refuses_a_bad_failover_with_exit_2(
        setup, delivery: dict[str, object], problem: str) -> None:
    setup.doc["delivery"].update(transport="sesv2", region="us-east-1")
    setup.doc["delivery"].update(delivery)
    setup.write()
    result = check(setup.path)
    assert result.returncode == 2
    assert problem in result.stderr, result.stderr
