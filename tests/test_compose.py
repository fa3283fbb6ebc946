"""The production stack (docker-compose.yaml, Dockerfiles, .env.example) and airflow.cfg.template.

Docker cannot run here, so the compose file is parsed (anchors resolved, variables interpolated the way Compose
does, with the values of `.env.example` plus test secrets) and its wiring is checked against what the DAGs need;
everything Airflow itself interprets (config options, CLI commands, connections) is checked against the
installed Airflow 3.3.2, and the template is rendered for both deployments.
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
DOTENV_EXAMPLE = REPO / ".env.example"
TEMPLATE = REPO / "airflow.cfg.template"
RENDER = REPO / "include" / "render_airflow_cfg.py"
INIT_SCRIPT = REPO / "include" / "compose" / "airflow-init.sh"
PG_INIT_DIR = REPO / "include" / "compose" / "postgres-init"

#: Every Airflow component of the stack, and the command each one runs.
AIRFLOW_COMMANDS = {
    "airflow-init": ["bash", "/opt/airflow/include/compose/airflow-init.sh"],
    "airflow-apiserver": ["airflow", "api-server", "--port", "8080"],
    "airflow-scheduler": ["airflow", "scheduler"],
    "airflow-dag-processor": ["airflow", "dag-processor"],
    "airflow-triggerer": ["airflow", "triggerer"],
    "airflow-worker": ["airflow", "celery", "worker", "-q", "default"],
    "airflow-worker-gpu": ["airflow", "celery", "worker", "-q", "gpu", "--concurrency", "1"],
    "airflow-worker-gpu-on-cpu": ["airflow", "celery", "worker", "-q", "gpu", "--concurrency", "1"],
    "flower": ["airflow", "celery", "flower"],
}
AIRFLOW_SERVICES = sorted(AIRFLOW_COMMANDS)
LONG_RUNNING_AIRFLOW = [name for name in AIRFLOW_SERVICES if name != "airflow-init"]
ONE_SHOT = {"airflow-init"}
WORKERS = {"airflow-worker": ["default"], "airflow-worker-gpu": ["gpu"], "airflow-worker-gpu-on-cpu": ["gpu"]}
#: The secrets compose requires from .env (no default, so never a shared development value).
REQUIRED_SECRETS = {
    "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY", "AIRFLOW_ADMIN_PASSWORD",
    "MINIO_ROOT_PASSWORD",
}  # fmt: skip
TEST_SECRETS = {
    "AIRFLOW_JWT_SECRET": "jwt-secret-for-the-compose-test-0123456789",
    "AIRFLOW_API_SECRET_KEY": "api-secret-for-the-compose-test-0123456789",
    "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(b"k" * 32).decode(),
    "AIRFLOW_ADMIN_PASSWORD": "admin-password",
    "MINIO_ROOT_PASSWORD": "minio-password",
}

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


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a .env file (comments and blank lines skipped)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


#: What Compose sees in the test: `.env.example` with its blank secrets filled in.
DOTENV = {**read_dotenv(DOTENV_EXAMPLE), **TEST_SECRETS}


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Expand ``value`` the way Compose does (``$$``, ``$V``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``)."""
    env = DOTENV if env is None else env

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


def compose_variables(compose: dict) -> dict[str, str | None]:
    """{variable: operator} of every Compose variable the file uses (``$$`` escapes excluded)."""
    found = {}
    for text in strings(compose):
        for m in _VAR.finditer(text):
            if name := m.group("name") or m.group("bare"):
                found[name] = m.group("op")
    return found


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


def effective_env(service: dict, dotenv: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a container gets with `.env.example` (plus test secrets) as `.env`."""
    return {k: interpolate(v, dotenv) for k, v in env_of(service).items()}


def command_of(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(interpolate(cmd)) if isinstance(cmd, str) else [interpolate(c) for c in cmd]


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
    """Container-side ports a service publishes or exposes (``HOST:CONTAINER`` or bare)."""
    ports = [*service.get("ports", []), *service.get("expose", [])]
    return {int(interpolate(str(p)).rsplit(":", 1)[-1].split("/")[0]) for p in ports}


def mounts_of(service: dict) -> dict[str, str]:
    """{container path: source} of a service's volumes."""
    out = {}
    for vol in service.get("volumes", []):
        source, target = interpolate(vol).split(":")[:2]
        out[target] = source
    return out


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without Airflow/DCTP settings that would leak into subprocesses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DCTP_"))}
    env.update(extra)
    return env


def shell_expand(text: str, env: dict[str, str]) -> str:
    """Expand ``${NAME}`` / ``${NAME:-default}`` of a shell script line with ``env``."""
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or (m.group(2) or ""), text
    )


def init_commands(services) -> list[list[str]]:
    """The commands of include/compose/airflow-init.sh, expanded with airflow-init's environment."""
    env = effective_env(services["airflow-init"])
    out = []
    for line in INIT_SCRIPT.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith(("airflow ", "python ")):
            # split first, then expand, as bash does: a value with spaces or quotes stays one word
            argv = [shell_expand(word, env) for word in shlex.split(line.split(" > ")[0].split(" || ")[0])]
            out.append(argv)
    return out


# --- shape and .env -----------------------------------------------------------------------------------


def test_stack_has_every_component(services):
    assert set(services) == set(AIRFLOW_SERVICES) | {"postgres", "redis", "minio", "mlflow"}
    # Optional extras are behind profiles, so a plain `docker compose up` does not start them.
    assert services["flower"]["profiles"] == ["flower"]
    assert services["airflow-worker-gpu-on-cpu"]["profiles"] == ["cpu-only"]
    unprofiled = {name for name, svc in services.items() if not svc.get("profiles")}
    assert set(services) - unprofiled == {"flower", "airflow-worker-gpu-on-cpu"}


@pytest.mark.parametrize("name", sorted(AIRFLOW_COMMANDS) + ["postgres", "redis", "minio", "mlflow"])
def test_service_uses_only_compose_spec_keys(services, name):
    svc = services[name]
    assert set(svc) <= COMPOSE_SERVICE_KEYS, f"unknown keys {set(svc) - COMPOSE_SERVICE_KEYS}"
    if "healthcheck" in svc:
        assert set(svc["healthcheck"]) <= HEALTHCHECK_KEYS
    assert all(isinstance(v, (str, int, float, bool)) for v in (svc.get("environment") or {}).values())
    assert interpolate(svc["image"]), "every service names its image"


def test_dot_env_example_defines_every_variable_without_a_default(compose):
    used = compose_variables(compose)
    example = read_dotenv(DOTENV_EXAMPLE)
    without_default = {name for name, op in used.items() if op not in (":-", "-")}
    assert without_default == REQUIRED_SECRETS  # the secrets, and nothing else, must come from .env
    assert without_default <= set(example)
    # The example commits no secret: each is blank and documented with how to generate it.
    assert all(example[name] == "" for name in REQUIRED_SECRETS)
    text = DOTENV_EXAMPLE.read_text(encoding="utf-8")
    assert "secrets.token_urlsafe" in text and "Fernet.generate_key()" in text
    # Optional variables listed in the example show the compose default.
    for name, op in used.items():
        if op == ":-" and name in example and example[name]:
            defaults = {m.group("arg") for t in strings(compose) for m in _VAR.finditer(t) if m.group("name") == name}
            assert defaults == {example[name]}, f"{name}: .env.example says {example[name]}, compose {defaults}"


def test_compose_refuses_to_start_without_the_secrets(services):
    env = env_of(services["airflow-scheduler"])
    for name in ("AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY"):
        without = {k: v for k, v in DOTENV.items() if k != name}
        with pytest.raises(AssertionError, match=f"required variable {name}"):
            interpolate(env[name], without)


# --- the Airflow environment --------------------------------------------------------------------------

#: Values every Airflow container must agree on (the JWT secret above all: workers present tokens it signed).
SHARED = [
    "AIRFLOW_EXECUTOR", "AIRFLOW_DB_URL", "AIRFLOW_BROKER_URL", "AIRFLOW_RESULT_BACKEND", "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY", "AIRFLOW_EXECUTION_API_URL", "DCTP_DATA_ROOT",
    "MLFLOW_TRACKING_URI", "DCTP_GPU_QUEUE", "DCTP_GPU_POOL", "DCTP_MODEL_CACHE", "DCTP_CONFIG", "DCTP_HOME",
]  # fmt: skip


@pytest.mark.parametrize("key", SHARED)
def test_every_airflow_service_gets_the_same(services, key):
    values = {name: effective_env(services[name]).get(key) for name in AIRFLOW_SERVICES}
    assert None not in values.values() and len(set(values.values())) == 1, f"{key} differs: {values}"


def test_shared_values_are_the_ones_the_dags_need(services):
    env = effective_env(services["airflow-worker"])
    assert env["AIRFLOW_EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW_JWT_SECRET"] == TEST_SECRETS["AIRFLOW_JWT_SECRET"]  # from .env, not a default
    assert env["AIRFLOW_FERNET_KEY"] == TEST_SECRETS["AIRFLOW_FERNET_KEY"]
    assert (env["DCTP_GPU_QUEUE"], env["DCTP_GPU_POOL"]) == ("gpu", "gpu")  # dag_defaults.py's names
    assert env["DCTP_CONFIG"].startswith("/opt/airflow/include/")


def test_settings_come_from_the_template_not_from_airflow_env_overrides(services):
    # One source of truth: no AIRFLOW__SECTION__OPTION anywhere (it would silently win over airflow.cfg).
    for name, svc in services.items():
        assert not [k for k in env_of(svc) if k.startswith("AIRFLOW__")], name
    # Every template variable is set by compose (or the image's AIRFLOW_HOME): no container falls back to
    # the embedded defaults, which would generate a different JWT secret per container.
    lines = [line for line in TEMPLATE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    names = set(re.findall(r"\$\{(\w+)\}", "\n".join(lines)))
    for name in AIRFLOW_SERVICES:
        assert names - {"AIRFLOW_HOME"} <= set(env_of(services[name])), name
    # Non-Airflow services carry no Airflow settings (and so no copy of the Airflow secrets).
    for name, svc in services.items():
        if name not in AIRFLOW_COMMANDS:
            assert not any(k.startswith("AIRFLOW") for k in env_of(svc)), name


def test_metadata_db_and_result_backend_are_the_postgres_service(services):
    env = effective_env(services["airflow-scheduler"])
    pg = effective_env(services["postgres"])
    for key, scheme in (("AIRFLOW_DB_URL", "postgresql+psycopg2"), ("AIRFLOW_RESULT_BACKEND", "db+postgresql")):
        url = urlparse(env[key])
        assert url.scheme == scheme, key
        assert url.hostname == "postgres"
        assert (url.username, url.password, url.path.lstrip("/")) == (
            pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"],
        ), key  # fmt: skip
    # The password moves with .env everywhere at once.
    moved = {**DOTENV, "POSTGRES_PASSWORD": "s3cret"}
    assert urlparse(effective_env(services["airflow-scheduler"], moved)["AIRFLOW_DB_URL"]).password == "s3cret"
    assert effective_env(services["postgres"], moved)["POSTGRES_PASSWORD"] == "s3cret"


def test_broker_is_the_redis_service(services):
    url = urlparse(effective_env(services["airflow-worker"])["AIRFLOW_BROKER_URL"])
    assert url.scheme == "redis" and url.hostname == "redis"
    assert (url.port or 6379) in container_ports(services["redis"])


def test_execution_api_url_is_the_api_server(services):
    url = urlparse(effective_env(services["airflow-worker"])["AIRFLOW_EXECUTION_API_URL"])
    assert url.hostname == "airflow-apiserver" and url.path == "/execution/"
    assert url.port == int(option_value(command_of(services["airflow-apiserver"]), "--port"))


# --- commands, queues, GPU -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AIRFLOW_COMMANDS))
def test_airflow_component_runs_its_command(services, name):
    assert command_of(services[name]) == AIRFLOW_COMMANDS[name]
    if name != "flower":
        assert "profiles" not in services[name] or name == "airflow-worker-gpu-on-cpu"


@pytest.mark.parametrize("name", sorted(WORKERS))
def test_worker_consumes_its_queue_and_shuts_down_warm(services, name):
    argv = command_of(services[name])
    assert argv[:3] == ["airflow", "celery", "worker"]
    assert option_value(argv, "-q", "--queues").split(",") == WORKERS[name]
    assert env_of(services[name])["DUMB_INIT_SETSID"] == "0"
    if WORKERS[name] == ["gpu"]:
        assert option_value(argv, "--concurrency", "-c") == "1"  # one model on the device at a time
        # The queue follows DCTP_GPU_QUEUE, like the DAGs' GPU tasks.
        moved = [interpolate(c, {**DOTENV, "DCTP_GPU_QUEUE": "a100"}) for c in services[name]["command"]]
        assert option_value(moved, "-q") == "a100"


def test_default_queue_is_the_cpu_workers_queue(tmp_path, services):
    cfg = render_for(services["airflow-worker"], tmp_path)
    assert cfg["operators"]["default_queue"] == WORKERS["airflow-worker"][0]


def test_gpu_worker_reserves_an_nvidia_gpu_and_runs_the_cuda_image(services):
    gpu = services["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    assert (REPO / gpu["build"]["dockerfile"]).is_file()
    assert interpolate(gpu["image"]) != interpolate(services["airflow-worker"]["image"])
    for name in set(services) - {"airflow-worker-gpu"}:
        assert "deploy" not in services[name], f"{name} must not reserve GPUs"
    # Every other Airflow service and mlflow run the CPU image built from Dockerfile.
    for name in set(AIRFLOW_SERVICES) - {"airflow-worker-gpu"} | {"mlflow"}:
        assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert interpolate(services[name]["image"]) == "dctp-airflow:3.3.2", name


@pytest.mark.parametrize("name", sorted(WORKERS) + ["airflow-init"])
def test_workers_share_the_model_cache_volume(compose, services, name):
    mounts = mounts_of(services[name])
    cache = effective_env(services[name])["DCTP_MODEL_CACHE"]
    assert mounts[cache] == "model-cache" and "model-cache" in compose["volumes"]
    assert effective_env(services[name])["HF_HOME"].startswith(cache + "/")


def test_mounted_folders_are_the_configured_ones(services):
    for name in AIRFLOW_SERVICES:
        mounts = mounts_of(services[name])
        home = effective_env(services[name])["DCTP_HOME"]
        assert mounts[f"{home}/dags"] == "./dags" and mounts[f"{home}/plugins"] == "./plugins", name
        assert mounts["/opt/airflow/include"] == "./include", name
    rel = Path(effective_env(services["airflow-worker"])["DCTP_CONFIG"]).relative_to("/opt/airflow/include")
    assert (REPO / "include" / rel).is_file()
    # The api-server reads the password file airflow-init writes: the same volume on both.
    passwords = effective_env(services["airflow-apiserver"])["AIRFLOW_PASSWORDS_FILE"]
    folder = str(Path(passwords).parent)
    assert mounts_of(services["airflow-init"])[folder] == mounts_of(services["airflow-apiserver"])[folder]


# --- health and start order ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(AIRFLOW_COMMANDS) | {"postgres", "redis", "minio", "mlflow"}))
def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(services, name):
    svc = services[name]
    if name in ONE_SHOT:
        assert svc["restart"] == "no" and "healthcheck" not in svc
    else:
        assert healthcheck_argv(svc), f"{name} has no healthcheck"
        assert svc["restart"] in ("always", "unless-stopped")


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
    assert effective_env(services["airflow-scheduler"])["AIRFLOW_SCHEDULER_HEALTH_CHECK"] == "True"

    for name, job in (("airflow-dag-processor", "DagProcessorJob"), ("airflow-triggerer", "TriggererJob")):
        argv = healthcheck_argv(services[name])
        assert argv[:3] == ["airflow", "jobs", "check"] and option_value(argv, "--job-type") == job, name
    for name in WORKERS:
        argv = healthcheck_argv(services[name])
        assert "inspect" in argv and "ping" in argv and option_value(argv, "-d") == "celery@${HOSTNAME}", name

    mlflow_port = int(option_value(command_of(services["mlflow"]), "--port"))
    health = urlparse(healthcheck_argv(services["mlflow"])[-1])
    assert health.path == "/health" and health.port == mlflow_port


def test_celery_healthcheck_app_exists_in_the_installed_provider(tmp_path):
    argv = healthcheck_argv({"healthcheck": {"test": ["CMD-SHELL", _celery_check()]}})
    module, attr = option_value(argv, "--app").rsplit(".", 1)
    probe = f"import importlib, sys; sys.exit(0 if hasattr(importlib.import_module({module!r}), {attr!r}) else 1)"
    env = clean_env(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__EXECUTOR="CeleryExecutor")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _celery_check() -> str:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return compose["services"]["airflow-worker"]["healthcheck"]["test"][1]


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


@pytest.mark.parametrize("name", sorted(AIRFLOW_COMMANDS))
def test_airflow_service_waits_for_db_broker_store_and_init(services, name):
    deps = {t: s["condition"] for t, s in services[name]["depends_on"].items()}
    assert deps["postgres"] == deps["redis"] == deps["minio"] == "service_healthy"
    if name != "airflow-init":
        assert deps["airflow-init"] == "service_completed_successfully"  # migrated, pool, connections, bucket
    if name in WORKERS:
        assert deps["airflow-apiserver"] == "service_healthy"  # the Task Execution API
        assert deps["mlflow"] == "service_healthy"


def test_start_order_has_no_cycle(services):
    graph = {name: set(svc.get("depends_on") or {}) for name, svc in services.items()}
    done: set[str] = set()
    while graph:
        ready = {n for n, deps in graph.items() if deps <= done}
        assert ready, f"dependency cycle among {sorted(graph)}"
        done |= ready
        graph = {n: d for n, d in graph.items() if n not in ready}


# --- airflow-init: DB, admin, pool, connections, bucket, models --------------------------------------------


def test_airflow_init_script_does_every_step_in_order(services):
    assert mounts_of(services["airflow-init"])["/opt/airflow/include"] == "./include"
    assert subprocess.run(["bash", "-n", str(INIT_SCRIPT)], capture_output=True).returncode == 0
    steps = [argv[:3] for argv in init_commands(services) if argv[1:2] != ["-"]]
    assert steps[0] == ["airflow", "db", "migrate"]  # first: everything else writes to the DB
    assert ["airflow", "pools", "set"] in steps and ["airflow", "connections", "add"] in steps
    assert ["python", "/opt/airflow/include/compose/ensure_bucket.py", "s3://dctp/data"] in steps
    assert ["python", "/opt/airflow/include/prepare_models.py"] in [a[:2] for a in init_commands(services)]


def test_airflow_init_creates_the_gpu_pool_the_dags_use(services):
    pools = [argv for argv in init_commands(services) if argv[:3] == ["airflow", "pools", "set"]]
    assert len(pools) == 1
    name, slots = pools[0][3:5]
    worker = effective_env(services["airflow-worker-gpu"])
    assert name == worker["DCTP_GPU_POOL"] == "gpu" and slots == "1"  # pool slots = GPUs (one by default)
    moved = {**DOTENV, "DCTP_GPU_POOL_SLOTS": "4"}
    assert effective_env(services["airflow-init"], moved)["DCTP_GPU_POOL_SLOTS"] == "4"


def test_airflow_init_creates_aws_default_pointing_at_minio_with_its_credentials(services):
    adds = {argv[3]: argv[4:] for argv in init_commands(services) if argv[:3] == ["airflow", "connections", "add"]}
    assert set(adds) == {"aws_default", "dctp_source_pg"}
    assert adds["aws_default"][0] == "--conn-json"
    conn = json.loads(adds["aws_default"][1])
    assert conn["conn_type"] == "aws"
    endpoint = urlparse(conn["extra"]["endpoint_url"])
    assert endpoint.hostname == "minio" and endpoint.port in container_ports(services["minio"])
    minio = effective_env(services["minio"])
    assert (conn["login"], conn["password"]) == (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"])
    # dctp_source_pg only when DCTP_SOURCE_PG_URI is set (the script guards it).
    script = INIT_SCRIPT.read_text(encoding="utf-8")
    assert 'if [[ -n "${DCTP_SOURCE_PG_URI:-}" ]]; then' in script
    assert effective_env(services["airflow-init"])["DCTP_SOURCE_PG_URI"] == ""
    # The connection secrets live in airflow-init only; tasks read the connection from the metadata DB.
    for name in set(AIRFLOW_SERVICES) - {"airflow-init"}:
        assert not {"DCTP_AWS_DEFAULT_CONN", "AIRFLOW_ADMIN_PASSWORD"} & set(env_of(services[name])), name


def test_bucket_of_the_data_root_is_created_and_holds_mlflow_artifacts(services):
    sys.path.insert(0, str(REPO / "include" / "compose"))
    try:
        from ensure_bucket import bucket_of
    finally:
        sys.path.pop(0)
    root = effective_env(services["airflow-worker"])["DCTP_DATA_ROOT"]
    assert urlparse(root).scheme == "s3" and urlparse(root).path.strip("/")
    assert bucket_of(root) == "dctp" and bucket_of("file:///tmp/x") is None
    with pytest.raises(ValueError, match="names no bucket"):
        bucket_of("s3:///data")
    artifacts = urlparse(option_value(command_of(services["mlflow"]), "--artifacts-destination"))
    assert artifacts.scheme == "s3" and artifacts.netloc == bucket_of(root)


def test_ensure_bucket_creates_once_against_s3(monkeypatch):
    moto = pytest.importorskip("moto")
    sys.path.insert(0, str(REPO / "include" / "compose"))
    try:
        import ensure_bucket
    finally:
        sys.path.pop(0)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    conn = json.dumps({"conn_type": "aws", "login": "k", "password": "s", "extra": {"region_name": "us-east-1"}})
    with moto.mock_aws():
        client = ensure_bucket.s3_client(conn)
        assert ensure_bucket.ensure_bucket(client, "dctp") is True
        assert ensure_bucket.ensure_bucket(client, "dctp") is False  # idempotent across `up`s
        monkeypatch.setenv("DCTP_AWS_DEFAULT_CONN", conn)
        assert ensure_bucket.main(["s3://dctp2/data"]) == 0
        assert {b["Name"] for b in client.list_buckets()["Buckets"]} == {"dctp", "dctp2"}


def test_admin_user_is_written_for_the_simple_auth_manager(services, tmp_path):
    env = effective_env(services["airflow-init"])
    assert env["AIRFLOW_USERS"] == "admin:admin" and env["DCTP_ADMIN_USER"] == "admin"
    script = INIT_SCRIPT.read_text(encoding="utf-8")
    snippet = script.split("python - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    out = tmp_path / "auth" / "passwords.json"
    run_env = {**clean_env(), "AIRFLOW_PASSWORDS_FILE": str(out), "DCTP_ADMIN_USER": env["DCTP_ADMIN_USER"],
               "AIRFLOW_ADMIN_PASSWORD": env["AIRFLOW_ADMIN_PASSWORD"]}  # fmt: skip
    subprocess.run([sys.executable, "-c", snippet], env=run_env, check=True, timeout=60)
    assert json.loads(out.read_text()) == {"admin": TEST_SECRETS["AIRFLOW_ADMIN_PASSWORD"]}


# --- MLflow -------------------------------------------------------------------------------------------------


def test_mlflow_tracking_uri_is_the_mlflow_service_and_accepted_by_it(services):
    uri = urlparse(effective_env(services["airflow-worker"])["MLFLOW_TRACKING_URI"])
    argv = command_of(services["mlflow"])
    assert services["mlflow"]["entrypoint"] == ["mlflow"] and argv[0] == "server"
    assert uri.scheme == "http" and uri.hostname == "mlflow"
    assert uri.port == int(option_value(argv, "--port")) and option_value(argv, "--host") == "0.0.0.0"
    # MLflow 3 rejects requests whose Host header is not allowed; workers send "mlflow:5000".
    assert uri.netloc in option_value(argv, "--allowed-hosts").split(",")
    assert "--serve-artifacts" in argv  # clients upload through the server, with no S3 credentials
    mlflow_env = effective_env(services["mlflow"])
    assert urlparse(mlflow_env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    minio = effective_env(services["minio"])
    assert (mlflow_env["AWS_ACCESS_KEY_ID"], mlflow_env["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"],
    )  # fmt: skip


def test_mlflow_backend_store_is_its_own_postgres_database_created_by_the_init_script(services):
    store = urlparse(option_value(command_of(services["mlflow"]), "--backend-store-uri"))
    assert store.scheme == "postgresql+psycopg2" and store.hostname == "postgres"
    pg = services["postgres"]
    pg_env = effective_env(pg)
    assert store.path.lstrip("/") != pg_env["POSTGRES_DB"]  # not Airflow's metadata database
    # include/compose/postgres-init/ runs in the postgres container on first start and creates role + DB.
    assert mounts_of(pg)["/docker-entrypoint-initdb.d"] == "./include/compose/postgres-init"
    scripts = sorted(PG_INIT_DIR.glob("*.sh"))
    assert scripts, "no postgres init script"
    text = "\n".join(s.read_text(encoding="utf-8") for s in scripts)
    assert "CREATE ROLE" in text and "CREATE DATABASE %I OWNER %I" in text
    for script in scripts:
        assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    # The script names the database after the role; both match MLflow's URI, and so does the password.
    assert (store.username, store.password) == (pg_env["MLFLOW_DB_USER"], pg_env["MLFLOW_DB_PASSWORD"])
    assert store.path.lstrip("/") == pg_env["MLFLOW_DB_USER"]
    moved = {**DOTENV, "MLFLOW_DB_PASSWORD": "m1"}
    uri = interpolate(next(c for c in services["mlflow"]["command"] if c.startswith("--backend")), moved)
    assert urlparse(uri.split("=", 1)[1]).password == "m1" == effective_env(pg, moved)["MLFLOW_DB_PASSWORD"]
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_feedback_store_is_its_own_postgres_database_created_by_the_init_script(services):
    from dctp_tasks.feedback.db import connection_url

    pg_env = effective_env(services["postgres"])
    for name in AIRFLOW_SERVICES:
        url = connection_url(effective_env(services[name])["AIRFLOW_CONN_DCTP_FEEDBACK"])
        assert (url.host, url.port, url.drivername) == ("postgres", 5432, "postgresql+psycopg2")
        assert (url.username, url.password) == (pg_env["FEEDBACK_DB_USER"], pg_env["FEEDBACK_DB_PASSWORD"])
        assert url.database == pg_env["FEEDBACK_DB_USER"] != pg_env["POSTGRES_DB"]
    text = "\n".join(s.read_text(encoding="utf-8") for s in sorted(PG_INIT_DIR.glob("*.sh")))
    assert 'create "${FEEDBACK_DB_USER}" "${FEEDBACK_DB_PASSWORD}"' in text


# --- images -------------------------------------------------------------------------------------------------


def _pin(package: str) -> str:
    requirements = (REPO / "requirements.txt").read_text(encoding="utf-8")
    return re.search(rf"^{re.escape(package)}(?:\[[^\]]*\])?==(\S+)", requirements, re.MULTILINE).group(1)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_image_installs_the_pins_the_package_and_bakes_the_models(dockerfile):
    text = (REPO / dockerfile).read_text(encoding="utf-8")
    assert f"torch=={_pin('torch')}" in text
    assert "-r /opt/dctp/requirements.txt -c /opt/dctp/constraints.txt" in text
    assert re.search(r"pip install (--no-cache-dir )?--no-deps /opt/dctp$", text, re.MULTILINE)
    assert re.search(r"^RUN python /opt/dctp/prepare_models.py", text, re.MULTILINE)  # SmolLM2 in the image
    assert "DCTP_MODEL_CACHE=/opt/dctp/models" in text
    for folder in ("dags", "plugins", "include"):
        assert re.search(rf"^COPY .*\b{folder} /opt/airflow/{folder}$", text, re.MULTILINE), folder
    # airflow.cfg is rendered at start from the same template and renderer as `make up`.
    assert 'ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/dctp/entrypoint.sh"]' in text
    assert "COPY --chown=airflow:0 airflow.cfg.template /opt/dctp/airflow.cfg.template" in text
    assert "include/render_airflow_cfg.py include/compose/entrypoint.sh /opt/dctp/" in text


def test_cpu_image_is_the_official_airflow_and_gpu_image_is_cuda():
    cpu = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^FROM apache/airflow:{re.escape(_pin('apache-airflow'))}-python3\.11$", cpu, re.MULTILINE)
    assert "download.pytorch.org/whl/cpu" in cpu
    gpu = (REPO / "Dockerfile.gpu").read_text(encoding="utf-8")
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)$", gpu, re.MULTILINE).group(1)
    assert base.startswith("nvidia/cuda:") and "cudnn-runtime" in base
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", base).groups()
    # The CUDA torch wheel index matches the base image's CUDA version (e.g. 12.8 -> cu128).
    assert f"TORCH_INDEX_URL=https://download.pytorch.org/whl/cu{''.join(cuda)}" in gpu
    assert "python3.11" in gpu and "AIRFLOW_HOME=/opt/airflow" in gpu


def test_entrypoint_renders_then_hands_over():
    text = (REPO / "include" / "compose" / "entrypoint.sh").read_text(encoding="utf-8")
    assert subprocess.run(["bash", "-n", "-c", text], capture_output=True).returncode == 0
    assert "render_airflow_cfg.py /opt/dctp/airflow.cfg.template" in text
    assert text.rstrip().endswith('exec "$@"')


# --- against the installed Airflow -------------------------------------------------------------------------

_PROBE = r"""
import json, sys
from airflow.cli.cli_parser import get_parser
from airflow.models.connection import Connection

data = json.load(sys.stdin)
parser = get_parser()
out = {"commands": {}, "connections": {}}
for name, argv in data["commands"].items():
    try:
        ns = parser.parse_args(argv)
        out["commands"][name] = {"ok": True, "queues": getattr(ns, "queues", None)}
    except SystemExit as exc:
        out["commands"][name] = {"ok": False, "code": exc.code}
for conn_id, spec in data["connections"].items():
    c = Connection.from_json(spec, conn_id=conn_id) if spec.startswith("{") else Connection(conn_id=conn_id, uri=spec)
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


def test_commands_connections_and_healthchecks_parse_in_airflow(services, tmp_path):
    commands = {name: command_of(services[name])[1:] for name in LONG_RUNNING_AIRFLOW}
    for name in ("airflow-dag-processor", "airflow-triggerer"):
        argv = healthcheck_argv(services[name])
        commands[f"{name}:healthcheck"] = [a.replace("${HOSTNAME}", "host") for a in argv[1:]]
    connections = {}
    for i, argv in enumerate(init_commands(services)):
        if argv[0] == "airflow":
            commands[f"airflow-init:{i}"] = argv[1:]
        if argv[:3] == ["airflow", "connections", "add"]:
            connections[argv[3]] = argv[5]
    connections["dctp_source_pg"] = "postgresql://reader:pw@db.internal:5432/corpus"  # .env.example's example
    payload = json.dumps({"commands": commands, "connections": connections})
    result = _last_json(_airflow(["-c", _PROBE], tmp_path, stdin=payload, AIRFLOW__CORE__EXECUTOR="CeleryExecutor"))
    for name, outcome in result["commands"].items():
        assert outcome["ok"], f"{name}: `airflow {' '.join(commands[name])}` is rejected by Airflow's CLI"
    for name, queues in WORKERS.items():
        assert result["commands"][name]["queues"].split(",") == queues
    aws = result["connections"]["aws_default"]
    assert aws["conn_type"] == "aws" and urlparse(aws["extra"]["endpoint_url"]).hostname == "minio"
    assert aws["login"] == effective_env(services["minio"])["MINIO_ROOT_USER"]
    assert result["connections"]["dctp_source_pg"]["conn_type"] == "postgres"


# --- airflow.cfg.template ----------------------------------------------------------------------------------


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


def render_for(service: dict, tmp_path: Path) -> configparser.ConfigParser:
    """The airflow.cfg a compose container renders at start (entrypoint.sh) from its environment."""
    proc, out = render(tmp_path, **effective_env(service))
    assert proc.returncode == 0, proc.stderr
    return read_cfg(out)


@pytest.mark.parametrize("name", LONG_RUNNING_AIRFLOW)
def test_compose_renders_the_celery_settings(services, tmp_path, name):
    cfg = render_for(services[name], tmp_path)
    assert cfg["core"]["executor"] == "CeleryExecutor"
    assert urlparse(cfg["celery"]["broker_url"]).hostname == "redis"
    assert urlparse(cfg["celery"]["result_backend"]).hostname == "postgres"
    assert cfg["database"]["sql_alchemy_conn"].startswith("postgresql+psycopg2://airflow:")
    assert cfg["api_auth"]["jwt_secret"] == TEST_SECRETS["AIRFLOW_JWT_SECRET"]
    assert cfg["api"]["secret_key"] == TEST_SECRETS["AIRFLOW_API_SECRET_KEY"]
    assert cfg["core"]["fernet_key"] == TEST_SECRETS["AIRFLOW_FERNET_KEY"]
    assert cfg["core"]["execution_api_server_url"] == "http://airflow-apiserver:8080/execution/"
    assert cfg["core"]["dags_folder"] == "/opt/airflow/dags"
    assert cfg["scheduler"].getboolean("enable_health_check") is True
    assert cfg["core"].getint("parallelism") == 32 and cfg["celery"].getint("worker_concurrency") == 4
    # Nothing fell back to a per-container generated secret.
    home = tmp_path / "airflow_home"
    assert [p.name for p in home.iterdir()] == ["airflow.cfg"]


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
    assert cfg["core"].getint("parallelism") == 8
    assert cfg["core"]["execution_api_server_url"] == "http://localhost:8080/execution/"
    assert cfg["core"]["hostname_callable"] == "airflow.utils.net.getfqdn"
    assert cfg["core"]["simple_auth_manager_passwords_file"] == f"{home}/simple_auth_manager_passwords.json.generated"
    assert cfg["database"]["sql_alchemy_conn"] == f"sqlite:///{home}/airflow.db"
    assert cfg["celery"]["broker_url"] == "redis://127.0.0.1:6379/0"
    assert cfg["operators"]["default_queue"] == "default"
    assert cfg["logging"]["base_log_folder"] == f"{home}/logs"
    assert cfg["scheduler"].getboolean("enable_health_check") is False
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


def test_make_up_renders_the_same_template():
    up = (REPO / "include" / "up.sh").read_text(encoding="utf-8")
    assert '"$REPO/include/render_airflow_cfg.py" "$REPO/airflow.cfg.template" "$AIRFLOW_HOME/airflow.cfg"' in up


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


def test_airflow_reads_the_rendered_compose_file(services, tmp_path):
    proc, out = render(tmp_path, **effective_env(services["airflow-worker"]))
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
