"""Building and loading the native 8-bit kernel (gradwise.state.native): never skipped, so that a kernel that
stops compiling on a machine with a C compiler fails here instead of silently skipping its other tests."""

from __future__ import annotations

import pytest

from gradwise.state import native


@pytest.fixture
def fresh_library(monkeypatch):
    """`native.library()` asked anew inside the test, and again after it (its result is cached per process), with
    the kernel not switched off by the environment (a test may switch it off itself)."""
    monkeypatch.delenv("GRADWISE_NATIVE_8BIT", raising=False)
    native.library.cache_clear()
    yield
    native.library.cache_clear()


def test_where_a_c_compiler_exists_the_kernel_builds_and_loads(monkeypatch, fresh_library):
    if native._compiler() is None:
        pytest.skip("no C compiler: the compiled 8-bit step keeps inductor's code")
    assert native.library() is not None, native.build_error()
    assert native.available() and native.build_error() is None


def test_the_kernel_is_built_once_into_the_cache_directory(tmp_path, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("GRADWISE_CACHE_DIR", str(tmp_path))
    lib, error = native.load(native._FLAGS)
    assert lib is not None, error
    (built,) = tmp_path.glob("native8bit-*.so")
    assert built.stat().st_mode & 0o755 == 0o755  # others sharing the cache can load it
    stamp = built.stat().st_mtime_ns
    again, _ = native.load(native._FLAGS)
    assert again is not None and built.stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1
    # other flags are another build, under another name
    other, error = native.load((*native._FLAGS, "-DGW_UNUSED_FLAG"))
    assert other is not None, error
    assert len(list(tmp_path.glob("native8bit-*.so"))) == 2


def test_an_unwritable_cache_directory_falls_back_to_the_temporary_one(tmp_path, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("GRADWISE_CACHE_DIR", str(blocked / "cache"))  # cannot be made: its parent is a file
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    lib, error = native.load(native._FLAGS)
    assert lib is not None, error
    assert list((tmp_path / "tmp").glob("gradwise-*/native8bit-*.so"))


def test_a_failing_build_says_why_and_leaves_no_partial_file(tmp_path, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("GRADWISE_CACHE_DIR", str(tmp_path))
    lib, error = native.load((*native._FLAGS, "-fno-such-flag-in-any-compiler"))
    assert lib is None and "no-such-flag" in error
    assert list(tmp_path.iterdir()) == []


def test_without_a_compiler_the_kernel_is_missing_and_says_why(monkeypatch, fresh_library):
    monkeypatch.setattr(native, "_compiler", lambda: None)
    lib, error = native.load(native._FLAGS)
    assert lib is None and "no C compiler" in error
    assert native.library() is None and "no C compiler" in native.build_error()
    assert not native.available()


def test_the_environment_variable_switches_the_kernel_off(monkeypatch, fresh_library):
    monkeypatch.setenv("GRADWISE_NATIVE_8BIT", "0")
    assert native.library() is None and "GRADWISE_NATIVE_8BIT" in native.build_error()
    assert not native.available()


def test_a_refused_march_native_falls_back_to_the_portable_build(monkeypatch, tmp_path, fresh_library):
    if native._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("GRADWISE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_NATIVE_FLAGS", ("-fno-such-flag-in-any-compiler",))
    lib = native.library()
    assert lib is not None and native.build_error() is None
    assert lib.gw8_vectorised() == 0 and lib.gw8_openmp() == 0  # the last flag set: portable C, POSIX threads
