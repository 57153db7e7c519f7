"""Static checks of the full-stack docker-compose.yaml and Dockerfile.

No Docker engine is needed: the compose file is parsed with PyYAML (``safe_load`` resolves the
``&airflow-common`` anchor and the ``<<`` merge keys the way Compose does) and its wiring is
checked: services, images, mounts, environment, dependencies, ports and volumes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"

AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
AIRFLOW_ALL = [*AIRFLOW_SERVICES, "airflow-init"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command(service: dict) -> list[str]:
    cmd = service.get("command")
    if cmd is None:
        return []
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]
    # The airflow image's entrypoint runs `airflow <args>`; both spellings mean the same.
    return argv[1:] if argv[:1] == ["airflow"] else argv


def _depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def _volumes(service: dict) -> list[tuple[str | None, str]]:
    """(source, container target) of every volume entry, short or long syntax."""
    out = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            out.append((vol.get("source"), vol["target"]))
        else:
            parts = str(vol).split(":")
            out.append((parts[0], parts[1]) if len(parts) > 1 else (None, parts[0]))
    return out


def _mount_source(service: dict, target: str) -> str:
    sources = [src for src, tgt in _volumes(service) if tgt == target]
    assert len(sources) == 1, f"expected one mount at {target}, got {sources}"
    return sources[0]


def _published_ports(service: dict) -> set[tuple[int, int]]:
    published = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            published.add((int(port["published"]), int(port["target"])))
        else:
            host, container = str(port).rsplit(":", 2)[-2:]
            published.add((int(host), int(container.split("/")[0])))
    return published


def test_all_services_present(services: dict) -> None:
    assert set(services) >= {*AIRFLOW_ALL, "postgres", "mlflow"}


def test_shared_airflow_config_is_an_anchor() -> None:
    text = COMPOSE_FILE.read_text()
    assert re.search(r"^x-airflow-common:\s*&airflow-common\b", text, re.M)
    for name in AIRFLOW_ALL:
        block = re.search(rf"^  {re.escape(name)}:\n((?:    .*\n|\n)*)", text, re.M)
        assert block, name
        assert "<<: *airflow-common" in block.group(1), name


def test_airflow_services_build_from_repo_dockerfile(services: dict) -> None:
    images = set()
    for name in AIRFLOW_ALL:
        svc = services[name]
        build = svc.get("build")
        if build is None:
            # Allowed only when it reuses the image another Airflow service builds.
            assert svc.get("image"), name
        else:
            context = build if isinstance(build, str) else build.get("context")
            assert Path(context) == Path("."), name
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            assert (REPO / context / dockerfile).resolve() == DOCKERFILE.resolve(), name
        images.add(svc.get("image"))
    assert len(images) == 1, f"Airflow services use different images: {images}"


def test_airflow_commands(services: dict) -> None:
    for name, cmd in AIRFLOW_SERVICES.items():
        assert _command(services[name]) == [cmd], name
    assert _command(services["airflow-init"]) == ["db", "migrate"]
    assert services["airflow-init"].get("restart", "no") == "no"


def test_dags_and_example_configs_mounted(services: dict) -> None:
    for name in AIRFLOW_ALL:
        svc = services[name]
        dags = _mount_source(svc, "/opt/airflow/dags")
        configs = _mount_source(svc, "/opt/airflow/example_configs")
        assert (REPO / dags).resolve() == (REPO / "dags").resolve(), name
        assert (REPO / configs).resolve() == (REPO / "example_configs").resolve(), name
    # The host folders exist, and the loader really reads ../example_configs beside the dags.
    assert (REPO / "dags" / "mlops_pipelines.py").is_file()
    assert list((REPO / "example_configs").glob("*.yaml"))
    loader = (REPO / "dags" / "mlops_pipelines.py").read_text()
    assert '.parent.parent / "example_configs"' in loader


def test_airflow_environment(services: dict) -> None:
    mlflow_port = {container for _, container in _published_ports(services["mlflow"])}
    for name in AIRFLOW_ALL:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false", name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ), name
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"].lower() == "true", name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], name

        conn = urlparse(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert conn.scheme == "postgresql+psycopg2", name
        assert conn.hostname == "postgres", name
        pg_env = _env(services["postgres"])
        assert conn.username == pg_env["POSTGRES_USER"], name
        assert conn.password == pg_env["POSTGRES_PASSWORD"], name
        assert conn.path.lstrip("/") == pg_env["POSTGRES_DB"], name

        execution_api = urlparse(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert execution_api.hostname == "airflow-apiserver", name
        assert execution_api.port == 8080, name
        assert execution_api.path == "/execution/", name

        tracking = urlparse(env["MLFLOW_TRACKING_URI"])
        assert tracking.scheme == "http", name
        assert tracking.hostname == "mlflow", name
        assert tracking.port in mlflow_port, name

        assert env["AIRFLOW_MLOPS_HOME"] == "/opt/airflow/mlops", name


def test_mlops_home_is_a_shared_named_volume(compose: dict, services: dict) -> None:
    sources = {_mount_source(services[name], "/opt/airflow/mlops") for name in AIRFLOW_SERVICES}
    assert len(sources) == 1
    (source,) = sources
    assert source in compose["volumes"]


def test_depends_on(services: dict) -> None:
    init_deps = _depends_on(services["airflow-init"])
    assert init_deps["postgres"]["condition"] == "service_healthy"
    for name in AIRFLOW_SERVICES:
        deps = _depends_on(services[name])
        assert deps["airflow-init"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert "mlflow" in deps, name
    # service_healthy needs a healthcheck on the dependency.
    for name, svc in services.items():
        for dep, spec in _depends_on(svc).items():
            if spec.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy"


def test_every_dependency_is_a_service(services: dict) -> None:
    for name, svc in services.items():
        for dep in _depends_on(svc):
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name


def test_every_named_volume_is_declared(compose: dict, services: dict) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for svc in services.values():
        for source, _ in _volumes(svc):
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
    assert used, "no named volumes found"
    assert used <= declared, f"undeclared volumes: {used - declared}"


def test_postgres(services: dict) -> None:
    pg = services["postgres"]
    assert pg["image"] == "postgres:16"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert _mount_source(pg, "/var/lib/postgresql/data") in {"postgres-db-volume"}


def test_mlflow_server(compose: dict, services: dict) -> None:
    mlflow = services["mlflow"]
    match = re.fullmatch(r"ghcr\.io/mlflow/mlflow:v3\.\d+\.\d+", mlflow["image"])
    assert match, f"MLflow image must be pinned to a concrete 3.x tag: {mlflow['image']}"
    argv = _command(mlflow)
    assert argv[:2] == ["mlflow", "server"]

    def opt(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    store = opt("--backend-store-uri")
    assert store.startswith("sqlite:////"), "the MLflow image has no Postgres driver"
    db_path = store[len("sqlite:///"):]
    artifacts = opt("--artifacts-destination")
    assert "--serve-artifacts" in argv
    assert opt("--host") == "0.0.0.0"
    assert int(opt("--port")) == 5000
    # Airflow containers call it as http://mlflow:5000: MLflow 3 must accept that Host header.
    allowed = opt("--allowed-hosts").split(",")
    assert "mlflow:*" in allowed or "mlflow:5000" in allowed or "*" in allowed
    # Store and artifacts live on a declared named volume.
    data = _mount_source(mlflow, "/mlflow")
    assert data in compose["volumes"]
    assert db_path.startswith("/mlflow/") and artifacts.startswith("/mlflow/")


def test_published_ports(services: dict) -> None:
    assert (8080, 8080) in _published_ports(services["airflow-apiserver"])
    assert (5000, 5000) in _published_ports(services["mlflow"])
    for name in ("airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-init"):
        assert not _published_ports(services[name]), name


def test_top_comment_says_how_to_start() -> None:
    head = COMPOSE_FILE.read_text().split("x-airflow-common")[0]
    assert "docker compose up --build" in head
    assert "http://localhost:8080" in head and "http://localhost:5000" in head
    for planned in ("Kafka", "Spark", "S3"):
        assert planned in head


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_installs_package_on_airflow3_image() -> None:
    instructions = _dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) == 1
    assert re.fullmatch(r"apache/airflow:3\.\d+\.\d+(-python3\.\d+)?", froms[0]), froms[0]

    installs = [rest for kw, rest in instructions if kw == "RUN" and "pip install" in rest]
    assert installs, "no pip install in the Dockerfile"
    argv = shlex.split(installs[-1].split("pip install", 1)[1])
    assert "--no-cache-dir" in argv
    assert ".[all]" in argv, f"the package itself with every extra (.[all]) is not installed: {argv}"

    # The package sources are copied in before the install, and it runs as the airflow user.
    index = {i: (kw, rest) for i, (kw, rest) in enumerate(instructions)}
    install_at = max(i for i, (kw, rest) in index.items() if kw == "RUN" and "pip install" in rest)
    before = [index[i] for i in range(install_at)]
    copied = " ".join(rest for kw, rest in before if kw == "COPY")
    assert "pyproject.toml" in copied and "airflow_mlops" in copied
    users = [rest for kw, rest in before if kw == "USER"]
    assert users and users[-1] == "airflow"
    for needed in re.findall(r"[\w.]+", copied):
        if needed in {"pyproject.toml", "airflow_mlops"}:
            assert (REPO / needed).exists(), needed


def test_kafka_spark_and_s3_services_and_the_connections_that_reach_them(services: dict) -> None:
    import json

    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = _env(services["kafka"])
    assert "broker,controller" == kafka_env["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper
    assert "PLAINTEXT://kafka:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert _published_ports(services["kafka"]) == {(29092, 29092)}
    assert services["spark-worker"]["command"][-1] == "spark://spark-master:7077"
    assert services["minio"]["image"].startswith("minio/minio:")
    airflow_env = _env(services["airflow-scheduler"])
    assert json.loads(airflow_env["AIRFLOW_CONN_KAFKA_DEFAULT"])["host"] == "kafka:9092"
    spark = json.loads(airflow_env["AIRFLOW_CONN_SPARK_CLUSTER"])
    assert (spark["conn_type"], spark["host"], spark["port"]) == ("spark", "spark://spark-master", 7077)
    s3 = json.loads(airflow_env["AIRFLOW_CONN_S3_BACKUPS"])
    assert s3["extra"]["endpoint_url"] == "http://minio:9000"
    assert s3["login"] == _env(services["minio"])["MINIO_ROOT_USER"]
    assert "kafka" in _depends_on(services["airflow-scheduler"])
