"""`python -m vkq`, run as a user runs it (a subprocess): `info` lists devices, and every
ordinary mistake is one line on stderr naming what was typed, a non-zero exit, no traceback.
(The bench itself is a tool and is not run by the suite.)"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vkq.__main__ import parser

ROOT = Path(__file__).resolve().parent.parent
NO_DRIVER = {"VK_ICD_FILENAMES": "/nonexistent/icd.json", "VK_DRIVER_FILES": "/nonexistent/icd.json"}


def vkq_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vkq", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, **(env or {})})


def assert_one_line_error(r: subprocess.CompletedProcess, *expected: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    for text in expected:
        assert text in r.stderr, r.stderr


@pytest.fixture(scope="module")
def no_loader(tmp_path_factory) -> dict[str, str]:
    """An environment where `import vulkan` fails as the PyPI binding does on a machine
    without libvulkan.so.1 (a stand-in package of that name, first on the path)."""
    pkg = tmp_path_factory.mktemp("no_loader") / "vulkan"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise OSError('Cannot find Vulkan SDK version. Please ensure that it is installed and "
        "that the <sdk_root>/<version>/lib/ folder is in the library path')\n")
    return {"PYTHONPATH": os.pathsep.join([str(pkg.parent), str(ROOT)])}


def test_info_lists_devices_and_variant_choices():
    r = vkq_cli("info")
    assert r.returncode == 0, r.stderr
    assert "(default)" in r.stdout and "integer_dot_product" in r.stdout
    assert "rms_norm_vec4" in r.stdout


def test_info_marks_the_device_given():
    r = vkq_cli("info", "--device", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("[0] ") and "(--device)" in r.stdout.splitlines()[0]


@pytest.mark.parametrize("how", ["--device", "VKQ_DEVICE"])
def test_info_still_lists_devices_when_the_selector_matches_none(how):
    # info is the command that helps choose: it must not die on the choice it is helping with.
    r = vkq_cli("info", "--device", "nvidia") if how == "--device" else \
        vkq_cli("info", env={"VKQ_DEVICE": "nvidia"})
    assert r.stdout.startswith("[0] ") and "kernel variants" in r.stdout
    assert_one_line_error(r, f"{how}='nvidia' matches no device name", "have [")


@pytest.mark.parametrize("cmd", [("bench",), ("stats", "rms_norm_vec4")])
def test_device_option_is_named_as_typed(cmd):
    r = vkq_cli(*cmd, "--device", "5")
    assert_one_line_error(r, "--device=5: no device with that index")
    assert "VKQ_DEVICE" not in r.stderr  # the user did not set it


def test_device_variable_is_named_when_it_is_the_source():
    assert_one_line_error(vkq_cli("bench", env={"VKQ_DEVICE": "nvidia"}),
                          "VKQ_DEVICE='nvidia' matches no device name")


@pytest.mark.parametrize("cmd", [("info",), ("bench",), ("stats", "rms_norm_vec4")])
def test_no_driver_says_what_to_install(cmd):
    assert_one_line_error(vkq_cli(*cmd, env=NO_DRIVER), "no Vulkan driver found",
                          "mesa-vulkan-drivers")


@pytest.mark.parametrize("cmd", [("info",), ("bench",), ("stats", "rms_norm_vec4")])
def test_no_loader_says_what_to_install(cmd, no_loader):
    assert_one_line_error(vkq_cli(*cmd, env=no_loader), "libvulkan.so.1", "libvulkan1")


@pytest.mark.parametrize("name,value", [("VKQ_VALIDATION", "maybe"), ("VKQ_TIMEOUT_S", "abc")])
def test_bad_environment_variable_is_named(name, value):
    assert_one_line_error(vkq_cli("bench", env={name: value}), f"{name}='{value}'")


@pytest.mark.parametrize("args,expected", [
    (("bench", "--repeats", "0"), "--repeats: expected a positive integer, got '0'"),
    (("bench", "--repeats", "-1"), "--repeats: expected a positive integer, got '-1'"),
    (("bench", "--roofline-mib", "0"), "--roofline-mib: expected a positive integer, got '0'"),
    (("bench", "--m", "0"), "--m: expected a positive integer, got '0'"),
    (("bench", "--json", "/nonexistent/dir/out.json"), "--json /nonexistent/dir/out.json"),
    (("stats", "rms_norm_vec4", "--spec", "X"), "--spec: 'X': expected NAME=VALUE"),
    (("stats", "rms_norm_vec4", "--spec", "NOPE=3"), "unknown specialization constants ['NOPE']"),
    (("stats", "no_such_variant"), "unknown shader variant 'no_such_variant'"),
    ((), "required: COMMAND"),
])
def test_bad_arguments_are_one_line_errors(args, expected):
    assert_one_line_error(vkq_cli(*args), expected)


def test_every_option_has_help_text():
    def walk(p: argparse.ArgumentParser):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    yield p.prog, choice
                for sub in action.choices.values():
                    yield from walk(sub)
            elif not isinstance(action, argparse._HelpAction):
                yield p.prog, action
    actions = list(walk(parser()))
    assert len(actions) > 10
    for prog, action in actions:
        assert action.help, f"{prog} {action.option_strings or action.dest}: no help text"
