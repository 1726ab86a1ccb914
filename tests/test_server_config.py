"""The shipped Streamlit settings (.streamlit/config.toml) that keep a public server's visitors away from its
internals and keep the server from calling out at start."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and newer
CONFIG = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"


def test_no_error_details_reach_a_visitor_and_no_lookup_at_start() -> None:
    settings = tomllib.loads(CONFIG.read_text())
    assert settings["client"]["showErrorDetails"] == "none"  # Streamlit's default "full" shows tracebacks
    # Set by hand, Streamlit prints this address instead of asking checkip.amazonaws.com for the external one.
    assert settings["browser"]["serverAddress"] == "localhost"
    assert settings["server"]["maxUploadSize"] == 50
