"""The CLI's shape: one mount point, no side effects at import, a fast --help, one CONFIG form."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

PROJECT_COMMANDS = ["train", "eval", "select", "monitor", "retrain", "gate", "loop", "serve", "curve"]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean,
                          timeout=120)


def test_importing_tuneloop_changes_no_process_setting():
    res = _python("import os, tuneloop, tuneloop.cli; print(os.environ.get('OMP_WAIT_POLICY'))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None"


def test_the_entry_point_sets_the_openmp_wait_policy_before_torch_loads():
    code = ("import os, sys; sys.argv = ['tuneloop', 'config', 'schema']\n"
            "from tuneloop.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "sys.stderr.write(os.environ.get('OMP_WAIT_POLICY', '') + ' ' + str('torch' in sys.modules))")
    res = _python(code)
    assert res.stderr.strip().splitlines()[-1] == "PASSIVE False"
    # An explicit choice by the user wins.
    res = _python(code, OMP_WAIT_POLICY="ACTIVE")
    assert res.stderr.strip().splitlines()[-1] == "ACTIVE False"


def test_help_does_not_load_torch():
    res = _python("import sys; from typer.main import get_command; from tuneloop.cli import app; "
                  "get_command(app); print(sorted(m for m in ('torch', 'transformers', 'peft') "
                  "if m in sys.modules))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("command", PROJECT_COMMANDS)
def test_project_commands_take_config_in_one_form(command):
    res = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "tuneloop.yaml or the folder holding it" in res.output
    if command != "serve":  # a server prints no result object
        assert "--set" in res.output and "--json" in res.output


def test_select_measure_runs_as_a_module_without_a_runtime_warning(tmp_path):
    # select/__init__.py used to import measure, so `-m tuneloop.select.measure` imported it twice.
    res = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "tuneloop.select.measure"],
                         capture_output=True, text=True, timeout=120)
    assert "RuntimeWarning" not in res.stderr
    assert "IndexError" in res.stderr  # it got as far as reading its missing arguments


@pytest.mark.parametrize("args", [["eval", "--bootstrap", "abc"], ["eval", "--no-such-flag"],
                                  ["serve", "--max-batch", "0"]])
def test_a_bad_option_is_a_usage_error_not_a_traceback(args):
    code = f"import sys; sys.argv = ['tuneloop'] + {args!r}\nfrom tuneloop.cli import main\nmain()"
    res = _python(code)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
