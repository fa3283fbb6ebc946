"""The production-like stack (docker-compose.yaml) and the local Airflow settings (airflow.cfg.template).

Docker cannot run here, so the compose file is parsed (anchors resolved, variables interpolated with
their defaults the way Compose does) and its wiring is checked; everything Airflow itself interprets
(config options, CLI commands, connections) is checked against the installed Airflow 3.3.2.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
TEMPLATE = REPO / "airflow.cfg.template"
RENDER = REPO / "include" / "render_airflow_cfg.py"

#: Every Airflow component of the stack, and the command each one runs.
AIRFLOW_COMMANDS = {
    "airflow-init": ["airflow", "db", "migrate"],
    "airflow-apiserver": ["airflow", "api-server", "--port", "8080"],
    "airflow-scheduler": ["airflow", "scheduler"],
    "airflow-dag-processor": ["airflow", "dag-processor"],
    "airflow-triggerer": ["airflow", "triggerer"],
    "airflow-worker": ["airflow", "celery", "worker", "-q", "default"],
    "airflow-worker-gpu": ["airflow", "celery", "worker", "-q", "gpu", "--concurrency", "1"],
    "airflow-worker-gpu-on-cpu": ["airflow", "celery", "worker", "-q", "gpu", "--concurrency", "1"],
    "flower": ["airflow", "celery", "flower"],
}
AIRFLOW_SERVICES = set(AIRFLOW_COMMANDS)
ONE_SHOT = {"airflow-init", "minio-init"}
WORKERS = {"airflow-worker": ["default"], "airflow-worker-gpu": ["gpu"], "airflow-worker-gpu-on-cpu": ["gpu"]}

#: Service keys of the Compose specification (compose-spec.json) this file may use.
COMPOSE_SERVICE_KEYS = {
    "build", "command", "container_name", "depends_on", "deploy", "entrypoint", "environment", "env_file",
    "expose", "extra_hosts", "healthcheck", "hostname", "image", "init", "labels", "logging", "networks",
    "ports", "profiles", "pull_policy", "restart", "shm_size", "stop_grace_period", "stop_signal", "user",
    "volumes", "working_dir",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

_VAR = re.compile(
    r"\$(?:(?P<esc>\$)|\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))"
)


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Expand ``value`` the way Compose does (``$$``, ``$V``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        if m.group("esc"):
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        present = name in env
        if op == ":-":
            return env[name] if env.get(name) else arg
        if op == "-":
            return env[name] if present else arg
        if op in (":?", "?") and not (env.get(name) if op == ":?" else present):
            raise AssertionError(f"required variable {name} is unset: {arg}")
        return env.get(name, "")

    return _VAR.sub(sub, value)


def strings(node):
    """Yield every string value in a parsed YAML tree."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    """The raw (uninterpolated) environment of a service, as a dict."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def effective_env(service: dict) -> dict[str, str]:
    """The environment a container gets when no ``.env`` overrides anything."""
    return {k: interpolate(v) for k, v in env_of(service).items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else [interpolate(c) for c in cmd]


def option_value(argv: list[str], *flags: str) -> str | None:
    """The value of ``--flag VALUE`` or ``--flag=VALUE`` in ``argv``."""
    for i, arg in enumerate(argv):
        for flag in flags:
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def healthcheck_argv(service: dict) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(interpolate(test))
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), f"unexpected healthcheck kind {kind}"
    rest = [interpolate(part) for part in rest]
    return shlex.split(rest[0]) if kind == "CMD-SHELL" else rest


def container_ports(service: dict) -> set[int]:
    """Container-side ports a service publishes (``HOST:CONTAINER`` or bare)."""
    return {int(str(interpolate(str(p))).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])}


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without Airflow/DCTP settings that would leak into subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DCTP_"))}
    env.update(extra)
    return env


# --- shape -------------------------------------------------------------------------------------------


def test_stack_has_every_component(services):
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "redis", "minio", "minio-init", "mlflow"}
    # Optional extras are behind profiles, so a plain `docker compose up` does not start them.
    assert services["flower"]["profiles"] == ["flower"]
    assert services["airflow-worker-gpu-on-cpu"]["profiles"] == ["cpu-only"]
    unprofiled = {name for name, svc in services.items() if not svc.get("profiles")}
    assert {"airflow-worker", "airflow-worker-gpu", "airflow-apiserver", "mlflow"} <= unprofiled


def test_services_use_only_compose_spec_keys(services):
    for name, svc in services.items():
        assert set(svc) <= COMPOSE_SERVICE_KEYS, f"{name}: unknown keys {set(svc) - COMPOSE_SERVICE_KEYS}"
        if "healthcheck" in svc:
            assert set(svc["healthcheck"]) <= HEALTHCHECK_KEYS, name
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        env = svc.get("environment", {})
        assert all(isinstance(v, (str, int, float, bool)) for v in env.values()), f"{name}: nested env value"


def test_every_variable_has_a_default_so_up_works_without_dot_env(compose):
    missing = []
    for text in strings(compose):
        for m in _VAR.finditer(text):
            if (m.group("name") or m.group("bare")) and m.group("op") not in (":-", "-"):
                missing.append(m.group(0))
    # Only shell variables escaped as $${...} (expanded inside the container) may lack a default.
    assert missing == [], f"variables without a default: {missing}"


def test_airflow_services_share_one_image_build_and_environment(services):
    envs = {name: env_of(services[name]) for name in AIRFLOW_SERVICES}
    for name, env in envs.items():
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__CELERY__BROKER_URL",
        "AIRFLOW__CELERY__RESULT_BACKEND",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__API__SECRET_KEY",
        "AIRFLOW__CORE__FERNET_KEY",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
        "DCTP_DATA_ROOT",
        "AIRFLOW_CONN_AWS_DEFAULT",
        "MLFLOW_TRACKING_URI",
    ):
        values = {name: env.get(key) for name, env in envs.items()}
        assert len(set(values.values())) == 1 and None not in values.values(), f"{key} differs: {values}"
    # Non-Airflow services carry no Airflow settings (and so no copy of the secrets).
    for name, svc in services.items():
        if name not in AIRFLOW_SERVICES:
            assert not any(k.startswith("AIRFLOW") for k in env_of(svc)), name


def test_jwt_and_api_secrets_are_one_overridable_expression(services):
    env = env_of(services["airflow-scheduler"])
    for key, var in (
        ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
        ("AIRFLOW__API__SECRET_KEY", "AIRFLOW_API_SECRET_KEY"),
    ):
        expr = env[key]
        assert expr.startswith("${" + var + ":-"), expr
        assert len(interpolate(expr)) >= 32  # the development default is usable
        assert interpolate(expr, {var: "from-dot-env"}) == "from-dot-env"
    assert interpolate(env["AIRFLOW__API_AUTH__JWT_SECRET"]) != interpolate(env["AIRFLOW__API__SECRET_KEY"])


def test_metadata_db_and_result_backend_are_the_postgres_service(services):
    env = effective_env(services["airflow-scheduler"])
    pg = effective_env(services["postgres"])
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = urlparse(env[key])
        assert url.scheme in ("postgresql+psycopg2", "db+postgresql"), key
        assert url.hostname == "postgres" and url.hostname in services
        assert (url.username, url.password, url.path.lstrip("/")) == (
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            pg["POSTGRES_DB"],
        ), key


def test_broker_is_the_redis_service(services):
    url = urlparse(effective_env(services["airflow-worker"])["AIRFLOW__CELERY__BROKER_URL"])
    assert url.scheme == "redis" and url.hostname == "redis" and url.hostname in services
    assert (url.port or 6379) == 6379


# --- commands ----------------------------------------------------------------------------------------


def test_each_airflow_component_runs_its_command(services):
    for name, expected in AIRFLOW_COMMANDS.items():
        assert command_of(services[name]) == expected, name


def test_workers_consume_their_queues(services):
    for name, queues in WORKERS.items():
        argv = command_of(services[name])
        assert argv[:3] == ["airflow", "celery", "worker"]
        assert option_value(argv, "-q", "--queues").split(",") == queues, name
    # Tasks without an explicit queue land on the CPU worker's queue.
    assert env_of(services["airflow-worker"])["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "default"


def test_gpu_worker_reserves_nvidia_gpus_and_runs_a_cuda_build(services):
    gpu = services["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["capabilities"] == ["gpu"] and d.get("count") for d in devices)
    assert gpu["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"  # CUDA wheels
    assert services["airflow-worker"]["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert interpolate(gpu["image"]) != interpolate(services["airflow-worker"]["image"])
    for name in AIRFLOW_SERVICES - {"airflow-worker-gpu"}:
        assert "deploy" not in services[name], f"{name} must not reserve GPUs"


def test_celery_workers_shut_down_warm(services):
    for name in WORKERS:
        assert env_of(services[name])["DUMB_INIT_SETSID"] == "0", name


# --- health and start order ----------------------------------------------------------------------------


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc["restart"] == "no", name
            assert "healthcheck" not in svc, name
        else:
            assert healthcheck_argv(svc), f"{name} has no healthcheck"
            assert svc["restart"] in ("always", "unless-stopped"), name


def test_healthchecks_probe_the_right_thing(services):
    assert healthcheck_argv(services["postgres"])[0] == "pg_isready"
    assert healthcheck_argv(services["redis"]) == ["redis-cli", "ping"]
    assert healthcheck_argv(services["minio"]) == ["mc", "ready", "local"]

    api = urlparse(healthcheck_argv(services["airflow-apiserver"])[-1])
    api_port = int(option_value(command_of(services["airflow-apiserver"]), "--port"))
    assert api.path == "/api/v2/monitor/health" and api.port == api_port
    assert api_port in container_ports(services["airflow-apiserver"])

    sched = urlparse(healthcheck_argv(services["airflow-scheduler"])[-1])
    assert sched.port == 8974 and sched.path == "/health"  # [scheduler] scheduler_health_check_server_port
    assert env_of(services["airflow-scheduler"])["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"].lower() == "true"

    for name, job in (("airflow-dag-processor", "DagProcessorJob"), ("airflow-triggerer", "TriggererJob")):
        argv = healthcheck_argv(services[name])
        assert argv[:3] == ["airflow", "jobs", "check"] and option_value(argv, "--job-type") == job, name
    for name in WORKERS:
        argv = healthcheck_argv(services[name])
        assert "inspect" in argv and "ping" in argv, name

    mlflow_port = int(option_value(command_of(services["mlflow"]), "--port"))
    health = urlparse(healthcheck_argv(services["mlflow"])[-1])
    assert health.path == "/health" and health.port == mlflow_port


def test_depends_on_conditions_match_the_targets(services):
    for name, svc in services.items():
        for target, spec in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] in DEPENDS_CONDITIONS
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} health it never reports"
            if spec["condition"] == "service_completed_successfully":
                assert target in ONE_SHOT, f"{name} waits for long-running {target} to exit"
            assert not services[target].get("profiles"), f"{name} depends on optional {target}"


def test_airflow_services_wait_for_db_broker_and_migration(services):
    for name in AIRFLOW_SERVICES:
        deps = {t: s["condition"] for t, s in services[name]["depends_on"].items()}
        assert deps["postgres"] == "service_healthy", name
        assert deps["redis"] == "service_healthy", name
        assert deps["minio-init"] == "service_completed_successfully", name  # the bucket exists
        if name != "airflow-init":
            assert deps["airflow-init"] == "service_completed_successfully", name
    for name in WORKERS:
        deps = services[name]["depends_on"]
        assert deps["airflow-apiserver"]["condition"] == "service_healthy"  # the execution API
        assert deps["mlflow"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_start_order_has_no_cycle(services):
    graph = {name: set(svc.get("depends_on") or {}) for name, svc in services.items()}
    done: set[str] = set()
    while graph:
        ready = {n for n, deps in graph.items() if deps <= done}
        assert ready, f"dependency cycle among {sorted(graph)}"
        done |= ready
        graph = {n: d for n, d in graph.items() if n not in ready}


# --- storage, connections, MLflow, mounts -------------------------------------------------------------


def _minio_init_bucket(services) -> tuple[str, str]:
    """(endpoint, bucket) that minio-init creates, read from its `mc alias set` and `mc mb` lines."""
    script = interpolate(services["minio-init"]["command"][0])
    aliases, buckets = {}, []
    for line in script.splitlines():
        argv = shlex.split(line)
        if argv[:3] == ["mc", "alias", "set"]:
            aliases[argv[3]] = argv[4]
        elif argv[:2] == ["mc", "mb"]:
            buckets.append(next(a for a in argv[2:] if not a.startswith("-")))
    assert len(buckets) == 1, script
    alias, bucket = buckets[0].split("/", 1)
    return aliases[alias], bucket


def test_data_root_bucket_is_created_by_minio_init(services):
    endpoint, bucket = _minio_init_bucket(services)
    assert urlparse(endpoint).hostname == "minio" and urlparse(endpoint).port == 9000
    assert 9000 in container_ports(services["minio"])
    root = urlparse(effective_env(services["airflow-worker"])["DCTP_DATA_ROOT"])
    assert root.scheme == "s3" and root.netloc == bucket and root.path.strip("/")
    artifacts = urlparse(option_value(command_of(services["mlflow"]), "--artifacts-destination"))
    assert artifacts.scheme == "s3" and artifacts.netloc == bucket


def test_aws_default_connection_is_json_pointing_at_minio_with_its_credentials(services):
    conn = json.loads(effective_env(services["airflow-worker"])["AIRFLOW_CONN_AWS_DEFAULT"])
    assert conn["conn_type"] == "aws"
    endpoint = urlparse(conn["extra"]["endpoint_url"])
    assert endpoint.hostname == "minio" and endpoint.port in container_ports(services["minio"])
    minio = effective_env(services["minio"])
    assert (conn["login"], conn["password"]) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    # Overriding the MinIO credentials in .env moves the connection with them.
    override = {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p@ss"}
    conn = json.loads(interpolate(env_of(services["airflow-worker"])["AIRFLOW_CONN_AWS_DEFAULT"], override))
    assert (conn["login"], conn["password"]) == ("u", "p@ss")


def test_mlflow_tracking_uri_is_the_mlflow_service_and_accepted_by_it(services):
    uri = urlparse(effective_env(services["airflow-worker"])["MLFLOW_TRACKING_URI"])
    argv = command_of(services["mlflow"])
    assert uri.scheme == "http" and uri.hostname == "mlflow" and "mlflow" in services
    assert uri.port == int(option_value(argv, "--port"))
    assert option_value(argv, "--host") == "0.0.0.0"
    # MLflow 3 rejects requests whose Host header is not allowed; workers send "mlflow:5000".
    assert uri.netloc in option_value(argv, "--allowed-hosts").split(",")
    mlflow_env = effective_env(services["mlflow"])
    assert urlparse(mlflow_env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert mlflow_env["AWS_ACCESS_KEY_ID"] == effective_env(services["minio"])["MINIO_ROOT_USER"]


def test_execution_api_url_is_the_api_server(services):
    url = urlparse(effective_env(services["airflow-worker"])["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert url.hostname == "airflow-apiserver" and url.path == "/execution/"
    assert url.port == int(option_value(command_of(services["airflow-apiserver"]), "--port"))


def test_mounted_folders_are_the_configured_ones(services):
    env = effective_env(services["airflow-scheduler"])
    mounts = {}
    for vol in services["airflow-scheduler"]["volumes"]:
        source, target = vol.split(":")[:2]
        mounts[target] = source
    assert mounts[env["AIRFLOW__CORE__DAGS_FOLDER"]] == "./dags"
    assert mounts[env["AIRFLOW__CORE__PLUGINS_FOLDER"]] == "./plugins"
    assert mounts["/opt/airflow/include"] == "./include"
    # DCTP_CONFIG names a file that exists in the mounted include/ folder.
    rel = Path(env["DCTP_CONFIG"]).relative_to("/opt/airflow/include")
    assert (REPO / "include" / rel).is_file()


def test_dockerfile_builds_on_the_pinned_airflow(services):
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8")
    pin = re.search(r"^apache-airflow\[[^\]]*\]==(\S+)", requirements, re.MULTILINE).group(1)
    assert re.search(rf"^FROM apache/airflow:{re.escape(pin)}-python3\.11$", dockerfile, re.MULTILINE)
    for folder in ("dags", "plugins", "include"):
        assert re.search(rf"^COPY .*\b{folder} /opt/airflow/{folder}$", dockerfile, re.MULTILINE), folder
    assert "-c /opt/dctp/constraints.txt" in dockerfile and "--no-deps /opt/dctp" in dockerfile
    assert services["airflow-worker"]["build"]["context"] == "."


# --- against the installed Airflow -------------------------------------------------------------------

_PROBE = r"""
import json, sys
from airflow.cli.cli_parser import get_parser
from airflow.secrets.environment_variables import EnvironmentVariablesBackend

data = json.load(sys.stdin)
parser = get_parser()
out = {"commands": {}, "connections": {}}
for name, argv in data["commands"].items():
    try:
        ns = parser.parse_args(argv)
        out["commands"][name] = {"ok": True, "queues": getattr(ns, "queues", None)}
    except SystemExit as exc:
        out["commands"][name] = {"ok": False, "code": exc.code}
backend = EnvironmentVariablesBackend()
for conn_id in data["connections"]:
    c = backend.get_connection(conn_id)
    out["connections"][conn_id] = {"conn_type": c.conn_type, "host": c.host, "login": c.login, "extra": c.extra_dejson}
print(json.dumps(out))
"""


def _airflow(args: list[str], tmp_path: Path, stdin: str | None = None, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(AIRFLOW_HOME=str(tmp_path / "airflow_home"), **env),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _last_json(stdout: str):
    """The JSON a probe printed last (Airflow may log warnings to stdout before it)."""
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def airflow_options(tmp_path_factory) -> dict[str, set[str]]:
    """{section: {option}} of every option Airflow 3.3.2 (with the installed providers) knows."""
    out = _airflow(["-m", "airflow", "config", "list", "--defaults"], tmp_path_factory.mktemp("defaults"))
    options: dict[str, set[str]] = {}
    section = None
    for line in out.splitlines():
        if m := re.fullmatch(r"\[([^\]]+)\]", line.strip()):
            section = m.group(1)
            options.setdefault(section, set())
        elif (m := re.fullmatch(r"# Variable: AIRFLOW__(\S+)", line.strip())) and section:
            prefix = section.upper() + "__"
            assert m.group(1).startswith(prefix), line
            options[section].add(m.group(1)[len(prefix) :].lower())
    assert {"dags_folder", "executor", "simple_auth_manager_users"} <= options["core"]  # parsed correctly
    assert "broker_url" in options["celery"]
    return options


def test_compose_airflow_settings_exist_in_airflow(services, airflow_options):
    for name in AIRFLOW_SERVICES:
        for key in env_of(services[name]):
            if key.startswith("AIRFLOW__"):
                section, option = key[len("AIRFLOW__") :].lower().split("__", 1)
                assert option in airflow_options.get(section, set()), f"{name}: {key} is not an Airflow 3.3.2 option"


def test_commands_connections_and_healthchecks_parse_in_airflow(services, tmp_path):
    commands = {name: command_of(services[name])[1:] for name in AIRFLOW_SERVICES}
    for name in ("airflow-dag-processor", "airflow-triggerer"):
        argv = healthcheck_argv(services[name])
        commands[f"{name}:healthcheck"] = [a.replace("${HOSTNAME}", "host") for a in argv[1:]]
    env = effective_env(services["airflow-worker"])
    conn_env = {k: v for k, v in env.items() if k.startswith("AIRFLOW_CONN_")}
    payload = json.dumps({"commands": commands, "connections": ["aws_default", "dctp_source_pg"]})
    result = _last_json(
        _airflow(["-c", _PROBE], tmp_path, stdin=payload, AIRFLOW__CORE__EXECUTOR="CeleryExecutor", **conn_env)
    )
    for name, outcome in result["commands"].items():
        assert outcome["ok"], f"{name}: `airflow {' '.join(commands[name])}` is rejected by Airflow's CLI"
    for name, queues in WORKERS.items():
        assert result["commands"][name]["queues"].split(",") == queues
    aws = result["connections"]["aws_default"]
    assert aws["conn_type"] == "aws" and urlparse(aws["extra"]["endpoint_url"]).hostname == "minio"
    assert aws["login"] == effective_env(services["minio"])["MINIO_ROOT_USER"]
    pg = result["connections"]["dctp_source_pg"]
    assert pg["conn_type"] == "postgres" and pg["host"] == "postgres"


# --- airflow.cfg.template ----------------------------------------------------------------------------


def render(tmp_path: Path, template: Path = TEMPLATE, out: Path | None = None, **env: str):
    out = out or tmp_path / "airflow_home" / "airflow.cfg"
    proc = subprocess.run(
        [sys.executable, str(RENDER), str(template), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(AIRFLOW_HOME=str(tmp_path / "airflow_home"), **env),
    )
    return proc, out


def read_cfg(path: Path) -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()  # Airflow's parser interpolates % the same way
    cfg.read(path, encoding="utf-8")
    return cfg


def test_template_renders_the_embedded_defaults(tmp_path):
    proc, out = render(tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = read_cfg(out)
    home = (tmp_path / "airflow_home").resolve()
    assert cfg["core"]["dags_folder"] == str(REPO / "dags")
    assert cfg["core"]["plugins_folder"] == str(REPO / "plugins")
    assert cfg["core"]["executor"] == "LocalExecutor"
    assert cfg["core"].getboolean("load_examples") is False
    assert cfg["core"].getboolean("dags_are_paused_at_creation") is True
    assert cfg["core"].getint("max_active_runs_per_dag") >= 1
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{home}/airflow.db"
    assert cfg["celery"]["broker_url"] == "redis://127.0.0.1:6379/0"
    assert cfg["operators"]["default_queue"] == "default"
    assert cfg["logging"]["base_log_folder"] == f"{home}/logs"
    assert cfg["api"].getint("port") == 8080
    # Secrets are generated once, kept private in AIRFLOW_HOME, and stable across renders.
    jwt = cfg["api_auth"]["jwt_secret"]
    assert len(jwt) >= 32 and jwt == (home / ".jwt_secret").read_text().strip()
    assert cfg["api"]["secret_key"] not in ("", jwt)
    assert len(base64.urlsafe_b64decode(cfg["core"]["fernet_key"])) == 32  # a valid Fernet key
    for name in (".jwt_secret", ".api_secret_key", ".fernet_key", "airflow.cfg"):
        assert (home / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"
    proc, _ = render(tmp_path)
    assert proc.returncode == 0 and read_cfg(out)["api_auth"]["jwt_secret"] == jwt
    other, other_out = render(tmp_path / "other")
    assert other.returncode == 0, other.stderr
    assert read_cfg(other_out)["api_auth"]["jwt_secret"] != jwt


def test_environment_overrides_defaults_and_percent_survives(tmp_path):
    db = "postgresql+psycopg2://airflow:p%40ss@db.internal/airflow"
    proc, out = render(
        tmp_path,
        AIRFLOW_EXECUTOR="CeleryExecutor",
        AIRFLOW_DB_URL=db,
        AIRFLOW_JWT_SECRET="shared-secret-from-the-environment",
        DCTP_HOME="/srv/dctp",
    )
    assert proc.returncode == 0, proc.stderr
    cfg = read_cfg(out)
    assert cfg["core"]["executor"] == "CeleryExecutor"
    assert cfg["core"]["dags_folder"] == "/srv/dctp/dags"
    assert cfg["database"]["sql_alchemy_conn"] == db  # % escaped as %% in the file, read back intact
    assert cfg["celery"]["result_backend"] == "db+" + db
    assert cfg["api_auth"]["jwt_secret"] == "shared-secret-from-the-environment"
    assert not (tmp_path / "airflow_home" / ".jwt_secret").exists()  # no secret generated when given


def test_every_template_option_exists_in_airflow(tmp_path, airflow_options):
    proc, out = render(tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = read_cfg(out)
    assert cfg.sections()
    for section in cfg.sections():
        for option in cfg[section]:
            assert option in airflow_options.get(section, set()), f"[{section}] {option} is not in Airflow 3.3.2"


def test_airflow_reads_the_rendered_file(tmp_path):
    proc, out = render(tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = read_cfg(out)
    pairs = [(s, o) for s in cfg.sections() for o in cfg[s]]
    script = (
        "import json, sys\nfrom airflow.configuration import conf\n"
        "print(json.dumps([conf.get(s, o) for s, o in json.load(sys.stdin)]))"
    )
    got = _last_json(_airflow(["-c", script], tmp_path, stdin=json.dumps(pairs), AIRFLOW_CONFIG=str(out)))
    assert dict(zip(pairs, got)) == {(s, o): cfg[s][o] for s, o in pairs}


def test_unresolved_variable_is_a_clear_error(tmp_path):
    template = tmp_path / "broken.cfg.template"
    template.write_text(
        TEMPLATE.read_text() + "\n[secrets]\nbackend_kwargs = ${DCTP_TEST_UNSET_VARIABLE}\nbackend = $oops\n"
    )
    lines = template.read_text().splitlines()
    proc, out = render(tmp_path, template=template)
    assert proc.returncode == 1
    assert not out.exists()  # nothing half-written
    lineno = next(i for i, line in enumerate(lines, 1) if "DCTP_TEST_UNSET_VARIABLE" in line)
    assert f"line {lineno}: ${{DCTP_TEST_UNSET_VARIABLE}} is not set and has no default" in proc.stderr
    assert "malformed placeholder '$'" in proc.stderr
    assert str(template) in proc.stderr and "Traceback" not in proc.stderr
    # Setting it fixes the render (the malformed line removed).
    template.write_text(TEMPLATE.read_text() + "\n[secrets]\nbackend_kwargs = ${DCTP_TEST_UNSET_VARIABLE}\n")
    proc, out = render(tmp_path, template=template, DCTP_TEST_UNSET_VARIABLE='{"a": 1}')
    assert proc.returncode == 0, proc.stderr
    assert read_cfg(out)["secrets"]["backend_kwargs"] == '{"a": 1}'


def test_out_defaults_to_airflow_home(tmp_path):
    home = tmp_path / "airflow_home"
    proc = subprocess.run(
        [sys.executable, str(RENDER), str(TEMPLATE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(AIRFLOW_HOME=str(home)),
    )
    assert proc.returncode == 0, proc.stderr
    assert read_cfg(home / "airflow.cfg")["core"]["executor"] == "LocalExecutor"
