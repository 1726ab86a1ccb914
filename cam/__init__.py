"""See what a CNN looks at. Packages from the bottom up: core, data, models, explain, evaluate, train, serve;
``cli`` on top. A package imports only the ones below it (``tests/test_layout.py``)."""
