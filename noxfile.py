"""Developer and CI sessions for netcall.

nox                      # tests (every interpreter found) + lint + typecheck
nox -s tests-3.10 tests-3.13 lint typecheck docs    # what .ci/run runs
nox -s docs              # the MkDocs site, built with --strict into site/
nox -s bench -- --help   # benchmarks against raw pyzmq and peer libraries
nox -s demo              # service + client demo with streaming
nox -s fuzz -- --seconds 300    # hostile peers against a service process (issue 9)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_venv = "yes"
nox.options.error_on_external_run = True
# A session naming an interpreter that is not installed fails instead of being skipped, so
# "the tests pass" never means "nothing ran". `nox -s tests` (all four) therefore needs every
# interpreter; name the ones you have (`nox -s tests-3.11`) on a machine with fewer.
nox.options.error_on_missing_interpreters = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
# One fixed interpreter for the single-run sessions (the image's default python).
TOOLS_PYTHON = "3.11"
ROOT = Path(__file__).parent
LINT_PATHS = ["src", "tests", "benchmarks", "examples", "noxfile.py"]
# Pinned so a new ruff/mypy release cannot turn CI red overnight; bump deliberately.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
BENCH_PEERS = ["zerorpc", "aiozmq", "grpcio", "uvloop", "matplotlib"]


def _expose_pyenv_interpreters() -> None:
    """Put every pyenv-installed CPython on PATH so nox can find python3.X.

    pyenv's shims exist for all installed versions but fail for versions that are
    not selected by `pyenv global`, so a shim found first would make nox (with CI
    set) report a missing interpreter. Real bin dirs are prepended ahead of shims.
    """
    root = os.environ.get("PYENV_ROOT")
    if not root and shutil.which("pyenv"):
        try:
            root = subprocess.run(
                ["pyenv", "root"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            root = None
    if not root:
        root = str(Path.home() / ".pyenv")
    versions = Path(root) / "versions"
    if not versions.is_dir():
        return
    path = os.environ.get("PATH", "").split(os.pathsep)
    extra: list[str] = []
    for want in PYTHONS:
        # newest patch release of each minor version
        cands = sorted(
            (p for p in versions.glob(f"{want}.*") if (p / "bin" / f"python{want}").exists()),
            key=lambda p: [int(x) if x.isdigit() else -1 for x in p.name.split(".")],
        )
        if cands:
            bindir = str(cands[-1] / "bin")
            if bindir not in path:
                extra.append(bindir)
    if extra:
        os.environ["PATH"] = os.pathsep.join(extra + path)


_expose_pyenv_interpreters()


def _existing(paths: list[str]) -> list[str]:
    return [p for p in paths if (ROOT / p).exists()]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest args after `--`)."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=TOOLS_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    session.install(RUFF)
    paths = _existing(LINT_PATHS)
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=TOOLS_PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/ (settings in pyproject.toml)."""
    session.install(MYPY, ".[all]")
    session.run("mypy", "src/", *session.posargs)
    # A typed client used correctly type-checks (tests/test_typed_client.py checks that the
    # misuses in tests/typecheck/typed_client_bad.py fail).
    session.run("mypy", "tests/typecheck/typed_client_ok.py")


@nox.session(python=TOOLS_PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks vs raw pyzmq and peers; results in benchmarks/README.md."""
    session.install(".[all]", *BENCH_PEERS)
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=TOOLS_PYTHON)
def demo(session: nox.Session) -> None:
    """Run the service + client demo (with streaming)."""
    session.install(".")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session(python=TOOLS_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the MkDocs site (docs/, mkdocs.yml) with --strict into site/."""
    session.install(".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs)


@nox.session(python=TOOLS_PYTHON)
def fuzz(session: nox.Session) -> None:
    """Long fuzzing run: hostile peer processes (tests/fuzz_peer.py) against a service process
    while an honest client calls it, for msgpack then JSON; then the property-based tests with
    many more examples. Arguments after `--` go to the msgpack campaign (see its --help)."""
    session.install(".[test]")
    campaign = ["python", "tests/fuzz_peer.py", "campaign"]
    session.run(*campaign, "--seconds", "120", "--attackers", "3", *session.posargs)
    session.run(*campaign, "--seconds", "30", "--serializer", "json")
    session.run(
        "pytest",
        "-q",
        "-o",
        "timeout=1800",
        "tests/test_fuzz_props.py",
        env={"HYPOTHESIS_PROFILE": "fuzz"},
    )


@nox.session(name="format", python=TOOLS_PYTHON)
def format_(session: nox.Session) -> None:
    """Apply ruff fixes and formatting (not run by default)."""
    session.install(RUFF)
    paths = _existing(LINT_PATHS)
    session.run("ruff", "check", "--fix", *paths)
    session.run("ruff", "format", *paths)
