"""deploy/ stays in sync with the code: every config key, env var, flag and extra it uses exists.

The files cannot be run here (no registry access for images), so this checks what can drift:
the TOML configs and registries validate against the real schemas, every ``FORGE_*`` variable
the compose file and Kubernetes manifests set lands on a config field (or is an upstream key an
expert names), commands parse with the real CLI parser, and hosts point at services that exist.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import tomllib
import yaml

from forge_gateway.cli import build_parser
from forge_gateway.config import GatewayConfig, _env_overrides, load_config
from forge_sdk.experts import ExpertModel

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "k8s"


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s(kind: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _yaml_docs(path):
            if doc.get("kind") == kind:
                return doc
    raise AssertionError(f"no {kind} in {K8S}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _gateway_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items() if name.startswith("gateway")}


def _configs() -> dict[str, str]:
    return {
        "deploy/gateway.toml": (DEPLOY / "gateway.toml").read_text(),
        "k8s ConfigMap gateway.toml": _k8s("ConfigMap")["data"]["gateway.toml"],
    }


def _registries() -> dict[str, list[ExpertModel]]:
    raw = {
        "deploy/experts.json": (DEPLOY / "experts.json").read_text(),
        "k8s ConfigMap experts.json": _k8s("ConfigMap")["data"]["experts.json"],
    }
    return {
        name: [ExpertModel.from_dict(e) for e in json.loads(text)["experts"]] for name, text in raw.items()
    }


def _upstream_key_vars() -> set[str]:
    return {e.api_key_env for experts in _registries().values() for e in experts if e.api_key_env}


@pytest.mark.parametrize("name", ["deploy/gateway.toml", "k8s ConfigMap gateway.toml"])
def test_configs_validate_against_the_schema(name: str, tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(_configs()[name])
    config = load_config(path, environ={})  # unknown keys / bad values raise, naming the key
    assert config.rate_limit.backend == "redis"
    assert config.registry == "/etc/largeforge/experts.json"


def _env_names() -> dict[str, set[str]]:
    """FORGE_* variables each deployment sets, by where they are set."""
    out = {name: set(svc.get("environment", {})) for name, svc in _gateway_services().items()}
    container = _k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    out["k8s Deployment env"] = {e["name"] for e in container.get("env", [])}
    out["k8s Secret"] = set(_k8s("Secret")["stringData"])
    return out


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:?message}`` placeholders replaced by a sample value."""
    return re.sub(r"\$\{[^}]*\}", "sample", str(value))


def test_every_env_var_is_a_config_field_or_an_upstream_key() -> None:
    upstream = _upstream_key_vars()
    sections = typing.get_type_hints(GatewayConfig)
    for where, names in _env_names().items():
        for name in sorted(names - upstream):
            assert name.startswith("FORGE_"), f"{where}: {name} is not a FORGE_* setting"
            ((section, value),) = _env_overrides({name: "x"}).items() or [(None, None)]
            assert section is not None, f"{where}: {name} names no config field"
            if isinstance(value, dict):
                (field,) = value
                assert field in sections[section].__struct_fields__, (
                    f"{where}: {name} is no [{section}] field"
                )
    for svc in _gateway_services().values():  # and the values convert
        env = {k: _interpolate(v) for k, v in svc["environment"].items() if k not in upstream}
        assert load_config(environ={"FORGE_MODEL": "m", **env}).auth.database_url


def test_upstream_keys_are_provided_where_experts_need_them() -> None:
    upstream = _upstream_key_vars()
    assert upstream, "the shipped registry should show an upstream key"
    env = _env_names()
    for svc in _gateway_services():
        assert upstream <= env[svc], f"{svc} misses {upstream - env[svc]}"
    assert upstream <= env["k8s Secret"]


def test_commands_parse_with_the_real_cli() -> None:
    parser = build_parser()
    commands = [svc["command"] for svc in _gateway_services().values()]
    commands.append(_k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        text = (DEPLOY / dockerfile).read_text()
        cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
        assert cmd and re.search(r'^ENTRYPOINT \["forge-gateway"\]$', text, re.M), dockerfile
        commands.append(json.loads(cmd.group(1)))
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.command == "serve" and args.config == "/etc/largeforge/gateway.toml"


def test_extras_the_images_install_exist() -> None:
    extras = tomllib.loads((DEPLOY.parent / "gateway" / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        for group in re.findall(r'"\./gateway\[([^\]]+)\]"', (DEPLOY / dockerfile).read_text()):
            for extra in group.split(","):
                assert extra in extras, f"{dockerfile} installs gateway[{extra}], which does not exist"


def test_compose_topology_points_at_its_services() -> None:
    compose = _compose()
    services = compose["services"]
    assert len(_gateway_services()) == 2
    config = tomllib.loads((DEPLOY / "gateway.toml").read_text())
    assert urlsplit(config["rate_limit"]["redis_url"]).hostname in services
    for svc in _gateway_services().values():
        db_url = svc["environment"]["FORGE_AUTH_DATABASE_URL"]
        assert db_url.startswith("postgresql://") and urlsplit(_interpolate(db_url)).hostname in services
        assert {"postgres", "redis"} <= set(svc["depends_on"])
    for expert in _registries()["deploy/experts.json"]:
        assert urlsplit(expert.endpoint or "").hostname in services  # the vLLM server is in the file


def test_k8s_probes_and_wiring() -> None:
    deployment = _k8s("Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    port = container["ports"][0]["containerPort"]
    config = tomllib.loads(_k8s("ConfigMap")["data"]["gateway.toml"])
    assert config["port"] == port and config["host"] == "0.0.0.0"
    assert _k8s("Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert _k8s("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert container["envFrom"][0]["secretRef"]["name"] == _k8s("Secret")["metadata"]["name"]
    kustomize = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomize["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_health_is_a_route() -> None:
    from forge_gateway.api.sdd import sdd_routes

    assert any("/health" in getattr(route, "paths", ()) for route in sdd_routes)


def test_kustomize_builds_every_manifest() -> None:
    """``kubectl kustomize`` (offline) renders the folder: the resources list and YAML are valid."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(proc.stdout) if doc)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Secret", "Service"]
