"""The deployment files in deploy/ against the code they configure: YAML that parses, alert rules
that use metrics the service really exports, environment variables that are real settings with
valid values, and the cross-references between the files (job names, runbook anchors, the served
model name, the adapter path). Nothing here starts a container, a cluster or a GPU.

Where the tool is installed, the files are also checked by it: promtool (rules, rule unit tests,
config), docker-compose (`config`), nginx (`-t`). Each of those tests is skipped without it.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from core.settings import PROJECT_ROOT, Settings
from eval.checklist import exported_series, metric_names_in

DEPLOY = PROJECT_ROOT / "deploy"
CHART = DEPLOY / "helm" / "policyrag"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
COMPOSE = DEPLOY / "compose.yaml"
PREFIX = Settings.model_config["env_prefix"]

# series Prometheus makes itself, not exported by anyone
SYNTHETIC_SERIES = {"up"}

# -- helpers ------------------------------------------------------------------------------------


def load(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def plain_yaml_files() -> list[Path]:
    """Every YAML file under deploy/ but the Helm templates (Go templates, not YAML)."""
    files = sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})
    return [f for f in files if (CHART / "templates") not in f.parents]


def alert_rules() -> list[dict]:
    return [rule for group in load(ALERTS)["groups"] for rule in group["rules"]]


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} with no variable set: the default or a stand-in."""
    return re.sub(r"\$\{(\w+)(?::?([-?])([^}]*))?\}",
                  lambda m: m.group(3) if m.group(2) == "-" else f"test-{m.group(1).lower()}", value)


def compose_services() -> dict[str, dict]:
    return load(COMPOSE)["services"]


def settings_from_env(monkeypatch, env: dict[str, str]) -> Settings:
    """Settings as a process with exactly these POLICYRAG_* variables would build them."""
    import os

    for name in [n for n in os.environ if n.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def field_of(variable: str) -> str:
    return variable[len(PREFIX):].lower()


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# -- YAML ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", plain_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_outside_the_helm_templates_parses(path):
    assert isinstance(load(path), dict), f"{path} is empty or not a mapping"


def test_the_files_we_expect_are_there():
    names = {str(p.relative_to(DEPLOY)) for p in plain_yaml_files()}
    assert {"compose.yaml", "prometheus/alerts.yml", "prometheus/prometheus.yml",
            "helm/policyrag/Chart.yaml", "helm/policyrag/values.yaml"} <= names


# -- alert rules --------------------------------------------------------------------------------


def test_every_metric_in_the_alert_rules_is_exported_by_the_service():
    exported = exported_series()
    used = {name for rule in alert_rules() for name in metric_names_in(rule["expr"])}
    ours = {n for n in used if n.startswith("policyrag_")}
    assert ours, "the rules use no policyrag_* metric at all"
    assert ours <= exported, f"not exported by answer/service.py: {sorted(ours - exported)}"
    others = used - ours - SYNTHETIC_SERIES - {n for n in used if n.startswith("vllm:")}
    assert not others, f"metrics of unknown origin in alerts.yml: {sorted(others)}"


def test_the_metric_name_check_would_catch_a_renamed_metric():
    renamed = "sum(rate(policyrag_citation_repair_total[30m])) / sum(rate(policyrag_answers_total[30m]))"
    assert metric_names_in(renamed) == {"policyrag_citation_repair_total", "policyrag_answers_total"}
    assert "policyrag_citation_repair_total" not in exported_series()


def test_the_required_alerts_exist_on_the_metrics_they_are_about():
    by_name = {rule["alert"]: metric_names_in(rule["expr"]) for rule in alert_rules()}
    assert "policyrag_requests_total" in by_name["PolicyRagHighErrorRate"]
    assert "policyrag_request_seconds_bucket" in by_name["PolicyRagAnswerLatencyP95High"]
    assert {"policyrag_refusals_total", "policyrag_answers_total"} <= by_name["PolicyRagRefusalRateSpike"]
    assert "policyrag_citation_repairs_total" in by_name["PolicyRagCitationRepairsHigh"]
    spike = next(r for r in alert_rules() if r["alert"] == "PolicyRagRefusalRateSpike")["expr"]
    assert "[1d] offset" in spike  # compared with its own past day


def test_every_alert_has_for_severity_and_the_three_annotations():
    for rule in alert_rules():
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_every_runbook_points_at_a_heading_of_the_deploy_readme():
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", readme, flags=re.MULTILINE)}
    assert "operations" in anchors
    for rule in alert_rules():
        target = re.match(r"deploy/README\.md#([\w-]+)", rule["annotations"]["runbook"])
        assert target and target.group(1) in anchors, f"{rule['alert']}: no heading for {rule['annotations']['runbook']}"


def test_the_vllm_metrics_in_the_rules_exist_in_the_installed_vllm():
    spec = importlib.util.find_spec("vllm")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vllm is not installed")
    source = (Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py").read_text(encoding="utf-8")
    used = {n for rule in alert_rules() for n in metric_names_in(rule["expr"]) if n.startswith("vllm:")}
    assert used
    missing = {n for n in used if f'"{n}"' not in source}
    assert not missing, f"not defined by the installed vllm: {sorted(missing)}"


def test_the_jobs_the_rules_match_are_the_jobs_prometheus_scrapes():
    jobs_in_rules = set(re.findall(r'job="([^"]+)"', ALERTS.read_text(encoding="utf-8")))
    scraped = {job["job_name"] for job in load(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]}
    assert jobs_in_rules == {"policyrag-answer", "vllm"}
    assert jobs_in_rules <= scraped
    # on Kubernetes the job label comes from the Services' policyrag.io/job label
    templates = "".join(p.read_text(encoding="utf-8") for p in (CHART / "templates").glob("*.yaml"))
    for job in jobs_in_rules:
        assert f"policyrag.io/job: {job}" in templates


def test_the_prometheus_config_loads_the_alert_rules():
    config = load(DEPLOY / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    mounts = compose_services()["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


# -- settings in compose and Helm ---------------------------------------------------------------


def compose_environments() -> dict[str, dict[str, str]]:
    return {name: {k: str(v) for k, v in (svc.get("environment") or {}).items()}
            for name, svc in compose_services().items()}


def test_every_policyrag_variable_in_compose_is_a_setting():
    fields = set(Settings.model_fields)
    seen = set()
    for service, env in compose_environments().items():
        for variable in env:
            if variable.startswith(PREFIX):
                seen.add(variable)
                assert field_of(variable) in fields, f"{service}: {variable} is not a setting"
    assert len(seen) >= 10


@pytest.mark.parametrize("service", ["answer-1", "ingest"])
def test_the_compose_settings_build_a_valid_settings_object(monkeypatch, service):
    env = {k: interpolate(v) for k, v in compose_environments()[service].items() if k.startswith(PREFIX)}
    settings = settings_from_env(monkeypatch, env)
    assert settings.store_url == "http://lb:6333"
    assert settings.vllm_url == "http://lb:8000/v1"
    assert (settings.store_shard_number, settings.store_replication_factor,
            settings.store_write_consistency_factor) == (6, 2, 1)
    assert settings.environment == "production"


def test_the_helm_settings_are_settings_with_valid_values(monkeypatch):
    values = load(CHART / "values.yaml")
    templates = "".join(p.read_text(encoding="utf-8") for p in (CHART / "templates").iterdir())
    variables = set(values["settings"]) | set(re.findall(rf"\b{PREFIX}[A-Z0-9_]+\b", templates))
    unknown = {v for v in variables if field_of(v) not in Settings.model_fields}
    assert not unknown, f"not settings: {sorted(unknown)}"
    # what the ConfigMap adds, with the release-dependent parts filled in
    env = {**values["settings"], "POLICYRAG_STORE_URL": "http://r-qdrant:6333",
           "POLICYRAG_VLLM_URL": "http://r-policyrag-vllm:8000/v1", "POLICYRAG_DATA_DIR": "/data",
           "POLICYRAG_SERVICE_PORT": str(values["answer"]["port"])}
    settings = settings_from_env(monkeypatch, env)
    assert settings.store_replication_factor <= values["qdrant"]["replicaCount"]


def test_the_helm_directory_placeholder_is_a_valid_directory_without_demo_keys(tmp_path):
    from retrieval.directory import load_directory

    path = tmp_path / "directory.yaml"
    path.write_text(load(CHART / "values.yaml")["directory"], encoding="utf-8")
    directory = load_directory(path)
    assert not [u for u in directory.users.values() if u.api_key]  # production refuses demo keys


# -- how the pieces fit -------------------------------------------------------------------------


def test_the_vllm_replicas_serve_what_the_workers_ask_for():
    from answer.vllm_server import SERVED_BASE
    from tuning.config import TrainConfig

    services = compose_services()
    worker_env = compose_environments()["answer-1"]
    replicas = [s for name, s in services.items() if name.startswith("vllm-")]
    assert len(replicas) == 2
    for replica in replicas:
        args = [interpolate(a) for a in replica["command"]]
        assert args[args.index("--served-model-name") + 1] == SERVED_BASE
        assert "--enable-lora" in args and "--disable-log-stats" not in args  # /metrics needs stats
        assert int(args[args.index("--max-lora-rank") + 1]) >= TrainConfig().rank
        # the same base model folder name as the workers' POLICYRAG_BASE_MODEL_PATH
        assert args[args.index("--model") + 1] == interpolate(worker_env["POLICYRAG_BASE_MODEL_PATH"])
        # adapters are sent by path: the replica sees the workers' data dir at the same place
        assert f"policyrag-data:{worker_env['POLICYRAG_DATA_DIR']}:ro" in replica["volumes"]
        assert replica["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"
        [gpu] = replica["deploy"]["resources"]["reservations"]["devices"]
        assert gpu["capabilities"] == ["gpu"]


def test_compose_has_a_three_peer_qdrant_cluster_and_several_workers():
    services = compose_services()
    peers = {name: s for name, s in services.items() if name.startswith("qdrant-")}
    assert len(peers) == 3
    assert all(s["environment"]["QDRANT__CLUSTER__ENABLED"] == "true" for s in peers.values())
    assert "--bootstrap" not in peers["qdrant-1"]["command"]
    assert all("--bootstrap" in peers[n]["command"] for n in ("qdrant-2", "qdrant-3"))
    workers = [n for n, s in services.items() if s.get("command") == ["policyrag", "serve"]]
    assert len(workers) >= 2
    assert services["audit-db"]["profiles"] == ["planned"]  # not built: never started by `up`


def test_the_helm_chart_carries_the_same_alert_rules():
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes(), (
        "deploy/helm/policyrag/files/alerts.yml differs from deploy/prometheus/alerts.yml: copy it again"
    )


def test_the_helm_chart_depends_on_the_official_qdrant_chart_as_a_cluster():
    chart, values = load(CHART / "Chart.yaml"), load(CHART / "values.yaml")
    assert chart["apiVersion"] == "v2"
    [qdrant] = [d for d in chart["dependencies"] if d["name"] == "qdrant"]
    assert qdrant["repository"] == "https://qdrant.github.io/qdrant-helm"
    assert qdrant["condition"] == "qdrant.enabled"
    assert values["qdrant"]["replicaCount"] >= 3 and values["qdrant"]["config"]["cluster"]["enabled"] is True


def test_every_value_a_helm_template_reads_is_in_values_yaml():
    values = load(CHART / "values.yaml")
    for template in (CHART / "templates").iterdir():
        text = template.read_text(encoding="utf-8")
        assert text.count("{{") == text.count("}}"), f"{template.name}: unbalanced braces"
        for path in re.findall(r"\.Values((?:\.[A-Za-z_]\w*)+)", text):
            node = values
            for key in path.strip(".").split("."):
                assert isinstance(node, dict) and key in node, f"{template.name}: .Values{path} is not in values.yaml"
                node = node[key]


# -- the tools themselves, where installed -------------------------------------------------------


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, **kwargs)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    run(["promtool", "check", "rules", "alerts.yml"], cwd=DEPLOY / "prometheus")
    run(["promtool", "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_promtool_accepts_the_prometheus_config(tmp_path):
    # the credentials file is a compose secret; point it at a stand-in so promtool can stat it
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    for secret in ("qdrant_api_key", "policyrag_metrics_token"):
        (tmp_path / secret).write_text("key")
        config = config.replace(f"/run/secrets/{secret}", str(tmp_path / secret))
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")])


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    return None


@pytest.mark.skipif(compose_command() is None, reason="neither docker-compose nor the docker compose plugin")
def test_docker_compose_accepts_the_file():
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "QDRANT_API_KEY": "k", "VLLM_API_KEY": "k",
           "POLICYRAG_JWT_HS256_SECRET": "s", "POLICYRAG_METRICS_TOKEN": "t", "BASE_MODEL_DIR": "/srv/models/Qwen2.5-7B-Instruct"}
    run([*compose_command(), "-f", str(COMPOSE), "--profile", "tools", "--profile", "planned", "config", "-q"],
        cwd=DEPLOY, env=env)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed")
def test_nginx_accepts_the_load_balancer_config(tmp_path):
    # the upstream names resolve only inside compose's network: point them at localhost
    config = (DEPLOY / "nginx" / "nginx.conf").read_text(encoding="utf-8")
    (tmp_path / "nginx.conf").write_text(re.sub(r"\b(answer|vllm|qdrant)-\d:", "127.0.0.1:", config))
    (tmp_path / "logs").mkdir()
    run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)])
