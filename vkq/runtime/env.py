"""vkq's environment variables, read in one place and parsed strictly.

A value that does not parse is an error naming the variable and the value, never a silent
default: `VKQ_VALIDATION=false` once turned validation *on* because only "" and "0" meant off.
Unset or empty means the default. (`VKQ_CACHE_DIR` is a path and is read by `vkq.shaderlib`.)
"""
from __future__ import annotations

import math
import os

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
DEFAULT_TIMEOUT_S = 300.0
_MAX_TIMEOUT_NS = 2**64 - 1  # vkWaitForFences takes a uint64 (UINT64_MAX: wait forever)


class EnvironmentVariableError(ValueError):
    """An environment variable vkq reads has a value it cannot use."""


def _value(name: str) -> str | None:
    """The variable's value stripped of surrounding blanks, or None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def flag(name: str, default: bool = False) -> bool:
    """A yes/no variable: 1/true/yes/on or 0/false/no/off, in any case."""
    value = _value(name)
    if value is None:
        return default
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise EnvironmentVariableError(
        f"{name}={os.environ[name]!r} is not a yes/no value: use one of "
        f"{'/'.join(TRUE_WORDS)} (on) or {'/'.join(FALSE_WORDS)} (off)")


def positive_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds."""
    value = _value(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise EnvironmentVariableError(
            f"{name}={os.environ[name]!r} is not a positive number of seconds (e.g. {name}=600)")
    return seconds


def validation_requested() -> bool:
    """`VKQ_VALIDATION`: run under the Khronos validation layer (default off)."""
    return flag("VKQ_VALIDATION")


def timeout_ns() -> int:
    """`VKQ_TIMEOUT_S` (default 300 s) in nanoseconds, as `vkWaitForFences` takes it."""
    ns = positive_seconds("VKQ_TIMEOUT_S", DEFAULT_TIMEOUT_S) * 1e9
    return _MAX_TIMEOUT_NS if ns >= _MAX_TIMEOUT_NS else int(ns)


def device_selector() -> str | None:
    """`VKQ_DEVICE`: a device index or name substring, or None for the best device."""
    return _value("VKQ_DEVICE")
