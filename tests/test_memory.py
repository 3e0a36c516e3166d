"""app.memory: the glibc malloc settings are applied, except those the environment already gave."""

from __future__ import annotations

import platform

import pytest

from app.memory import ARENA_MAX, MMAP_THRESHOLD_BYTES, tune_malloc

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="mallopt exists only in glibc; elsewhere tune_malloc does nothing")
def test_glibc_gets_a_fixed_mmap_threshold_and_two_arenas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert tune_malloc() == {"malloc_mmap_threshold": MMAP_THRESHOLD_BYTES, "malloc_arena_max": ARENA_MAX}


@pytest.mark.skipif(not GLIBC, reason="mallopt exists only in glibc; elsewhere tune_malloc does nothing")
def test_a_setting_from_the_environment_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_malloc() == {"malloc_mmap_threshold": MMAP_THRESHOLD_BYTES}
