"""Kernel microbenchmarks (installed as ``sparsecl.bench``).

Each ``bench_<op>.py`` defines ``CASES`` (for pytest-benchmark, via bench/conftest.py) and
``rows(quick)`` (for the ``sparsecl bench`` table). Timings are measured, never derived.
"""
