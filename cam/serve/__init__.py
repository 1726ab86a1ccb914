"""Serving people: the gallery of pictures a visitor may choose, shared links, the page's server settings and
workarounds, slow methods in a child process, and the batch job over folders."""
