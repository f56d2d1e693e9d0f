"""scripts/setup.sh's choice of Python (`--check`: decides, prints, changes nothing),
scripts/py, and that CI runs exactly the README's test command.

The script runs from a copy in a temporary directory, so a developer's own .venv does not
change what is tested and nothing is ever installed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")  # Debian/Ubuntu's: externally managed since 12 / 23.04


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    for name in ("setup.sh", "py"):
        shutil.copy2(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    return tmp_path


def setup_check(repo: Path, python: str) -> dict[str, str]:
    r = subprocess.run(["bash", str(repo / "scripts" / "setup.sh"), "--check"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "PYTHON": python})
    assert r.returncode == 0, r.stderr
    lines = dict(re.findall(r"^setup: ([^:]+): (.*)$", r.stdout, re.M))
    assert set(lines) == {"python", "externally managed", "install into",
                          "system packages to install"}, r.stdout
    return lines


def externally_managed(python: str) -> bool:
    code = ("import os, sys, sysconfig; print(sys.prefix == sys.base_prefix and os.path.isfile("
            "os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() == "True"


def test_check_installs_into_a_python_that_is_not_externally_managed(repo):
    # CI's path: pyenv's python (the one running these tests) takes pip installs directly.
    if externally_managed(sys.executable):
        pytest.skip("this interpreter is externally managed; the test below covers it")
    out = setup_check(repo, sys.executable)
    assert out["externally managed"] == "no"
    assert out["install into"] == sys.executable
    assert out["python"].split()[0] == sys.executable
    assert not (repo / ".venv").exists()  # --check changes nothing


@pytest.mark.skipif(not (SYSTEM_PYTHON.exists() and externally_managed(str(SYSTEM_PYTHON))),
                    reason="no externally managed /usr/bin/python3 here")
def test_check_makes_a_venv_for_an_externally_managed_python(repo):
    # Stock Debian/Ubuntu: pip refuses (PEP 668), so setup makes .venv with that python and
    # needs python3.X-venv for it (listed as a package to install when it is missing).
    out = setup_check(repo, str(SYSTEM_PYTHON))
    assert out["externally managed"] == "yes"
    assert out["install into"] == f".venv (new, made with {SYSTEM_PYTHON})"
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    ensurepip = subprocess.run([str(SYSTEM_PYTHON), "-c", "import ensurepip"]).returncode == 0
    assert (f"python{version}-venv" in out["system packages to install"]) != ensurepip
    assert not (repo / ".venv").exists()


def fake_venv(repo: Path) -> None:
    """A .venv whose python only echoes its arguments."""
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text('#!/bin/sh\necho "venv python: $*"\n')
    (bin_dir / "python").chmod(0o755)


def test_an_existing_venv_is_reused_whatever_the_python(repo):
    fake_venv(repo)
    assert setup_check(repo, sys.executable)["install into"] == ".venv (exists)"


def test_py_runs_the_venv_when_setup_made_one_else_python(repo):
    py = str(repo / "scripts" / "py")
    code = "import sys; print(sys.executable)"
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == sys.executable, r.stderr
    fake_venv(repo)
    r = subprocess.run([py, "-m", "vkq", "bench"], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == "venv python: -m vkq bench"


def test_unknown_option_is_refused(repo):
    r = subprocess.run(["bash", str(repo / "scripts" / "setup.sh"), "--yes"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


def readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"^bash scripts/setup\.sh && .*$", readme, re.M)


def test_ci_runs_exactly_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2 and commands[1].endswith("-m pytest -q"), commands
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == commands[1]


def test_scripts_are_executable_as_the_readme_runs_them():
    assert os.access(ROOT / "scripts" / "py", os.X_OK)
    assert all(c.split(" && ")[1].startswith("scripts/py ") for c in readme_commands())
