"""deploy/Dockerfile, linted (no Docker engine here to build it).

The key properties of the image: multi-stage, uv in the builder only, the locked dependencies of
every workspace member, a final stage with only the virtual environment, a non-root user whose
uid the Kubernetes manifests use, `scanner-auth` as the entrypoint; and a build context (named
ignore file beside the Dockerfile) that keeps what the build copies.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# BuildKit reads <Dockerfile>.dockerignore for `docker build -f deploy/Dockerfile .`.
IGNORE_FILE = ROOT / "deploy" / "Dockerfile.dockerignore"
RUN_AS_USER = 10001  # runAsUser in deploy/k8s (tests/deploy/test_manifests.py checks that side)
BUILD_TOOLS = re.compile(
    r"\b(uv|uvx|gcc|g\+\+|cc|make|build-essential|apt-get install|pip install)\b"
)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with comments dropped and continuation lines joined."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    out = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def _stages() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            base = re.sub(
                r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            stages.append(Stage(base, name))
        elif not stages:
            assert keyword == "ARG", f"only ARG before the first FROM, not {keyword}"
            key, _, value = args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, args))
    return global_args, stages


def _flags(args: str) -> dict[str, str]:
    return dict(
        part[2:].split("=", 1)
        for part in shlex.split(args)
        if part.startswith("--") and "=" in part
    )


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def test_multi_stage_with_a_slim_python_311_base() -> None:
    _, stages = _stages()
    final = stages[-1]
    builder = next(s for s in stages if s.name == "builder")
    assert len(stages) >= 2
    assert final.base == builder.base, "same Python in both stages: the venv links to it"
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim[\w.-]*(@sha256:[0-9a-f]{64})?", final.base)


def test_builder_installs_the_locked_workspace_with_uv() -> None:
    _, stages = _stages()
    builder = next(s for s in stages if s.name == "builder")
    env = _env(builder)
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    assert env["UV_COMPILE_BYTECODE"] == "1"
    assert env["UV_PROJECT_ENVIRONMENT"] == "/app/.venv"
    assert any("/uv" in args for args in builder.all("COPY")), "uv copied into the builder"
    syncs = [a for a in builder.all("RUN") if "uv sync" in a]
    assert syncs
    for flag in ("--frozen", "--no-dev", "--all-packages", "--no-editable"):
        assert all(flag in a for a in syncs), f"every uv sync uses {flag}"
    assert "--no-install-workspace" not in syncs[-1], "the last sync installs the workspace"


def test_dependency_layer_copies_every_workspace_member() -> None:
    """A new workspace member must be added to the Dockerfile's dependency layer."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    members = [
        path
        for pattern in project["tool"]["uv"]["workspace"]["members"]
        for path in sorted(ROOT.glob(pattern))
        if (path / "pyproject.toml").is_file()
    ]
    _, stages = _stages()
    builder = next(s for s in stages if s.name == "builder")
    copied = " ".join(builder.all("COPY"))
    for member in members:
        assert f"{member.relative_to(ROOT)}/pyproject.toml" in copied, member
    assert "uv.lock" in copied


def test_final_stage_is_only_the_venv_run_by_a_non_root_user() -> None:
    _, stages = _stages()
    final = stages[-1]
    copies = final.all("COPY")
    assert copies, "the final stage copies the venv"
    for args in copies:
        flags = _flags(args)
        assert flags.get("from") == "builder", f"final stage copies only from the builder: {args}"
        sources = [p for p in shlex.split(args) if not p.startswith("--")][:-1]
        assert sources == ["/app/.venv"], f"only the virtual environment: {args}"
    for args in final.all("RUN"):
        assert not BUILD_TOOLS.search(args.replace("pip uninstall", "")), f"build tool: {args}"
    users = final.all("USER")
    assert users, "USER set in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and int(user) == RUN_AS_USER
    assert any(f"--uid {RUN_AS_USER}" in a for a in final.all("RUN")), "the user exists"
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["scanner-auth"], "exec form"
    assert "/app/.venv/bin" in _env(final)["PATH"]


def test_build_context_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in IGNORE_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, p.removeprefix("**/")) or fnmatch.fnmatch(prefix, p)
            for p in patterns
            for prefix in prefixes + parts
            if not p.startswith("!")
        )

    for must_go in (".venv", ".git", ".dev"):
        assert ignored(must_go), f"{must_go} stays out of the build context"
    needed = ["uv.lock", "pyproject.toml", "README.md", "src/scanner_auth/cli.py"]
    needed += [str(p.relative_to(ROOT)) for p in ROOT.glob("services/*/pyproject.toml")]
    needed += [str(p.relative_to(ROOT)) for p in ROOT.glob("services/*/src/*/__init__.py")]
    needed += [str(p.relative_to(ROOT)) for p in ROOT.glob("shared/src/*/__init__.py")]
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not ignored(path), f"{path} is needed by the build but ignored"
