"""Environment variables: parsed strictly (vkq.runtime.env), errors name the variable."""
from __future__ import annotations

import pytest

from vkq.runtime import Device, Instance, VulkanUnavailable, choose_device
from vkq.runtime import env
from vkq.runtime.env import EnvironmentVariableError


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "Yes", "on", " on "])
def test_flag_true_words(monkeypatch, value):
    monkeypatch.setenv("VKQ_VALIDATION", value)
    assert env.validation_requested() is True


@pytest.mark.parametrize("value", ["0", "false", "False", "NO", "off", ""])
def test_flag_false_words_and_empty(monkeypatch, value):
    # "false" used to turn validation on: only "" and "0" meant off.
    monkeypatch.setenv("VKQ_VALIDATION", value)
    assert env.validation_requested() is False


def test_flag_unset_is_the_default(monkeypatch):
    monkeypatch.delenv("VKQ_VALIDATION", raising=False)
    assert env.validation_requested() is False
    assert env.flag("VKQ_VALIDATION", default=True) is True


@pytest.mark.parametrize("value", ["2", "maybe", "enabled", "t", "-1"])
def test_flag_refuses_other_values_naming_variable_and_value(monkeypatch, value):
    monkeypatch.setenv("VKQ_VALIDATION", value)
    with pytest.raises(EnvironmentVariableError, match=f"VKQ_VALIDATION='{value}'.*1/true/yes/on"):
        env.validation_requested()


def test_instance_follows_the_parsed_flag(monkeypatch):
    monkeypatch.setenv("VKQ_VALIDATION", "false")
    with Instance() as inst:
        assert inst.validation is False
    monkeypatch.setenv("VKQ_VALIDATION", "maybe")
    with pytest.raises(EnvironmentVariableError, match="VKQ_VALIDATION"):
        Instance()


@pytest.mark.parametrize("value,seconds", [("300", 300.0), ("0.5", 0.5), (" 2e3 ", 2000.0)])
def test_timeout_seconds(monkeypatch, value, seconds):
    monkeypatch.setenv("VKQ_TIMEOUT_S", value)
    assert env.timeout_ns() == int(seconds * 1e9)


def test_timeout_default_and_upper_clamp(monkeypatch):
    monkeypatch.delenv("VKQ_TIMEOUT_S", raising=False)
    assert env.timeout_ns() == 300 * 10**9
    monkeypatch.setenv("VKQ_TIMEOUT_S", "1e300")  # longer than a uint64 of ns: wait forever
    assert env.timeout_ns() == 2**64 - 1


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1s"])
def test_timeout_refuses_non_positive_or_non_numbers(monkeypatch, value):
    monkeypatch.setenv("VKQ_TIMEOUT_S", value)
    with pytest.raises(EnvironmentVariableError, match=f"VKQ_TIMEOUT_S='{value}'.*positive"):
        env.timeout_ns()


def test_device_reads_the_timeout_before_any_work(monkeypatch):
    monkeypatch.setenv("VKQ_TIMEOUT_S", "abc")
    with pytest.raises(EnvironmentVariableError, match="VKQ_TIMEOUT_S"):
        Device()


def test_device_selector_errors_name_where_it_came_from(monkeypatch):
    with Instance(validation=False) as inst:
        devices = inst.devices()
    monkeypatch.setenv("VKQ_DEVICE", "no such gpu")
    with pytest.raises(VulkanUnavailable, match="^VKQ_DEVICE='no such gpu' matches no device"):
        choose_device(devices)
    # An explicit selector is named as the caller typed it, not as the variable.
    with pytest.raises(VulkanUnavailable, match="^--device=99: no device with that index"):
        choose_device(devices, "99", "--device")
    with pytest.raises(VulkanUnavailable, match="^selector='no such gpu'"):
        choose_device(devices, "no such gpu")
    monkeypatch.setenv("VKQ_DEVICE", " ")  # blank: the default choice
    assert choose_device(devices) == choose_device(devices, "")
