"""The dashboard's patches of libraries' private parts (``cam.serve.library_patches``): each test fails when the library
changes under its patch (another version, the private part gone or different) or when the patch stops working."""

from __future__ import annotations

import asyncio
import inspect
import sys
import types
from importlib import metadata
from pathlib import Path

import pytest
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser as LibraryParser
from starlette.requests import Request

from cam.serve import library_patches

BOUNDARY = "----WebKitFormBoundaryTest"


def test_the_installed_libraries_are_the_versions_the_patches_were_tested_with() -> None:
    installed = {package: metadata.version(package) for package in library_patches.TESTED}
    assert installed == library_patches.TESTED


def test_streamlit_still_clears_keras_after_each_run_through_the_hook_we_replace() -> None:
    from streamlit.runtime.scriptrunner import script_runner

    source = inspect.getsource(script_runner)
    assert "def _clean_problem_modules" in source and "_log_if_error(_clean_problem_modules)" in source
    original = source.split("def _clean_problem_modules", 1)[1].split("\ndef ", 1)[0]
    assert "clear_session()" in original and 'close("all")' in original


def test_after_the_patch_keras_is_kept_and_figures_are_still_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.runtime.scriptrunner import script_runner

    assert library_patches.keep_models_between_runs()
    assert script_runner._clean_problem_modules is library_patches.close_figures_only
    calls = []
    fake_keras = types.SimpleNamespace(backend=types.SimpleNamespace(clear_session=lambda: calls.append("keras")))
    fake_pyplot = types.SimpleNamespace(close=lambda which: calls.append(f"pyplot {which}"))
    monkeypatch.setitem(sys.modules, "keras", fake_keras)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", fake_pyplot)
    script_runner._clean_problem_modules()
    assert calls == ["pyplot all"]


def upload_body(name: str) -> bytes:
    """A multipart body as Streamlit's uploader sends it: the file's name is the field's name and the file name."""
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
    return (head + "Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8 data" + f"\r\n--{BOUNDARY}--\r\n".encode()


def parse_form(body: bytes) -> list[str]:
    """The file names Starlette's form parser (Streamlit's upload route) reads from ``body``, given in two chunks."""
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]

    async def receive() -> dict:
        return {"type": "http.request", "body": chunks.pop(0) if chunks else b"", "more_body": bool(chunks)}

    async def read() -> list[str]:
        scope = {"type": "http", "method": "PUT",
                 "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]}
        form = await Request(scope, receive).form()
        return [value.filename for value in form.values()]

    return asyncio.run(read())


def test_the_library_refuses_a_long_header_line_and_the_patch_accepts_3000_characters_twice() -> None:
    name = "é" * 2996 + ".jpg"  # two bytes each in UTF-8: a 12 KB header line
    with pytest.raises(MultipartParseError, match="header size"):
        LibraryParser(BOUNDARY).write(upload_body(name))  # the library's own limit, 4,224 bytes
    assert library_patches.accept_long_upload_names()
    assert parse_form(upload_body(name)) == [name]


def test_the_patched_parser_still_limits_a_header_line() -> None:
    from starlette.formparsers import MultiPartException

    assert library_patches.accept_long_upload_names()
    with pytest.raises(MultiPartException):
        parse_form(upload_body("a" * library_patches.UPLOAD_HEADER_LIMIT))


def test_streamlit_still_fades_stale_elements_with_the_transition_the_page_turns_off() -> None:
    """The fade is an opacity transition of a second after half a second in Streamlit's front end; the workaround's
    rule sets every transition's duration to zero, on the tested version only."""
    import streamlit

    bundle = Path(streamlit.__file__).parent / "static" / "static" / "js"
    sources = "".join(path.read_text(errors="ignore") for path in bundle.glob("styled-components.*.js"))
    assert "=`1s ease-in 0.5s`" in sources and ".stale,transition:`opacity ${" in sources
    assert library_patches.no_fade_on_rerun() == "*{transition-duration:0s!important}"
