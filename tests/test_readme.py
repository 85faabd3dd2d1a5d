"""Every ```python block in README.md and docs/*.md runs, as its own process, and exits
cleanly: under ``python -X dev -W error``, with nothing on stderr but what it prints itself."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import netcall_env, tcp_url

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPETS = [
    (page, index, block)
    for page in PAGES
    for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]
STRICT = [sys.executable, "-X", "dev", "-W", "error"]
# -X dev turns on asyncio's debug mode, which logs callbacks slower than 0.1 s: on a busy
# machine that is timing, not a fault of the snippet.
SLOW_CALLBACK = re.compile(r"^Executing <.*> took [\d.]+ seconds$", re.M)


def stderr_of(done: subprocess.CompletedProcess[str]) -> str:
    return SLOW_CALLBACK.sub("", done.stderr).strip()


def test_readme_and_docs_have_snippets() -> None:
    assert sum(1 for page, _, _ in SNIPPETS if page.name == "README.md") >= 6
    assert {page.name for page, _, _ in SNIPPETS} >= {
        "README.md",
        "getting-started.md",
        "services.md",
        "clients.md",
        "streams.md",
        "errors.md",
        "deadlines.md",
        "legacy.md",
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("page", "index", "code"),
    SNIPPETS,
    ids=[f"{page.relative_to(ROOT)}-{index}" for page, index, _ in SNIPPETS],
)
def test_snippet_runs(page: Path, index: int, code: str, tmp_path: Path) -> None:
    script = tmp_path / f"snippet_{index}.py"
    script.write_text(code)
    done = subprocess.run(
        [*STRICT, str(script)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
        env=netcall_env(),
        check=False,
    )
    assert done.returncode == 0, (
        f"{page.name} snippet {index} failed:\n{done.stdout}\n{done.stderr}"
    )
    # what a snippet prints on stderr on purpose (print_exc, logging) is the only stderr allowed
    assert "Warning" not in done.stderr, done.stderr
    if "print_exc" not in code and "logging.basicConfig" not in code:
        assert stderr_of(done) == "", done.stderr


@pytest.mark.timeout(60)
def test_getting_started_service_and_client_talk(tmp_path: Path) -> None:
    """The getting-started page's service and client, as the two programs it says to run."""
    service_code, client_code = [
        code for page, _, code in SNIPPETS if page.name == "getting-started.md"
    ][:2]
    (tmp_path / "hello_service.py").write_text(service_code)
    (tmp_path / "hello_client.py").write_text(client_code)
    url = tcp_url()
    service = subprocess.Popen(
        [*STRICT, "hello_service.py", url],
        cwd=tmp_path,
        env=netcall_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        assert service.stdout.readline().strip() == f"serving on {url}"
        client = subprocess.run(
            [*STRICT, "hello_client.py", url],
            cwd=tmp_path,
            env=netcall_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        assert client.stdout.split("\n") == ["Hello World", "0", "1", "2", ""]
        assert stderr_of(client) == ""
    finally:
        service.send_signal(signal.SIGINT)
        _, err = service.communicate(timeout=15)
    assert "Warning" not in err, err
