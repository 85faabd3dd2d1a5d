"""A lone greenlet runs netcall's loop itself, turn by turn, waiting between turns on its hub
(``_gevent_lone.py``), in a fresh process with and without ``gevent.monkey.patch_all()``."""

from __future__ import annotations

import pytest

from _adapter_helpers import in_subprocess_header, run_python
from conftest import netcall_env

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "name", ["lone_greenlet", "ctrl_c_while_a_greenlet_calls", "loop_code_that_switches_greenlets"]
)
@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched"])
def test_lone_greenlet_runs_the_loop(patched: bool, name: str) -> None:
    code = in_subprocess_header(patched) + f"import _gevent_lone\n_gevent_lone.{name}()\n"
    proc = run_python(code, env=netcall_env(), timeout=50)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_a_hand_back_asker_gone_leaves_the_thread_serving() -> None:
    code = (
        in_subprocess_header(False) + "import _gevent_lone\n_gevent_lone.hand_back_asker_gone()\n"
    )
    proc = run_python(code, env=netcall_env(), timeout=50)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
