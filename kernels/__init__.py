"""fastrnn.kernels: the math of every backend (the kernel contract of docs/architecture.md).

Imports nothing from ``fastrnn``; installed as the subpackage ``fastrnn.kernels``.
"""
