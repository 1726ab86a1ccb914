"""Measuring the methods: the scores (``metrics``), scoring the registry on a dataset (``scoring``), the report
(``report``: run and write; ``report_content``: read and describe, no TensorFlow) and its parts on Ray
(``parallel``)."""
