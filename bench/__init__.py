"""Benchmarks (SPEC §6): each is ``DEBUG=1 .venv/bin/python -m bench.<name> [--small]``.

Figures and how to read them: docs/benchmarks.md.
"""
