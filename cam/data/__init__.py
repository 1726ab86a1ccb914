"""Datasets on disk: image folders, splits, sources and masks (``folders``), and getting them (``downloads``)."""
