"""Numba kernels: plain loops over rows, each tested against an independent computation.

The readable API lives in the modules above; each says which kernel does its work.
"""
