"""Benchmarks: kubus measured on this machine, side by side with the reference where one exists.

Each module runs with ``python -m bench.<name>`` and prints its figures plus a JSON line.
"""
