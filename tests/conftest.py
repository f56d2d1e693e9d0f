"""Test setup: the Khronos validation layer is on for the whole suite (VKQ_VALIDATION=1 unless
the environment says otherwise), with its synchronization validation (a missing barrier
between dispatches that touch the same bytes is reported), and any validation message fails
the test that caused it."""
from __future__ import annotations

import os

os.environ.setdefault("VKQ_VALIDATION", "1")
os.environ.setdefault("VK_LAYER_ENABLES", "VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT")

import pytest  # noqa: E402

import vkq  # noqa: E402
from vkq.runtime import take_validation_messages  # noqa: E402


@pytest.fixture(scope="session")
def device() -> vkq.Device:
    """The default device (lavapipe in CI), shared by the session."""
    return vkq.default_device()


@pytest.fixture(autouse=True)
def _no_validation_messages():
    take_validation_messages()
    yield
    msgs = take_validation_messages()
    if msgs:
        pytest.fail("Vulkan validation layer reported:\n" + "\n".join(msgs), pytrace=False)
