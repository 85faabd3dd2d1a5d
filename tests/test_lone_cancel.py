"""A call abandoned by a lone caller (Ctrl-C, ``gevent.kill``, ``gevent.Timeout``) is cancelled
on the service at once, with no later call to run the loop (``_lone_cancel.py``, each in a
fresh process; gevent with and without ``monkey.patch_all()``)."""

from __future__ import annotations

import pytest

from _adapter_helpers import in_subprocess_header, run_python
from conftest import netcall_env

pytestmark = pytest.mark.timeout(60)


def check(code: str) -> None:
    proc = run_python(code, env=netcall_env(), timeout=50)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stdout.rstrip().endswith("OK"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr


def test_ctrl_c_in_a_lone_thread_cancels_the_call_at_once() -> None:
    check(in_subprocess_header(False) + "import _lone_cancel\n_lone_cancel.ctrl_c()\n")


@pytest.mark.parametrize("how", ["kill", "timeout"])
@pytest.mark.parametrize("patched", [False, True], ids=["plain", "patched"])
def test_a_lone_greenlet_given_up_on_cancels_its_call_at_once(patched: bool, how: str) -> None:
    check(in_subprocess_header(patched) + f"import _lone_cancel\n_lone_cancel.green({how!r})\n")
