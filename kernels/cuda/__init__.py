"""The CUDA kernels of the gpu backend (``rnn.cu``) and what runs them: :mod:`.device` on a
CUDA device through CuPy (the backend), :mod:`.emulation` on the CPU (for the tests), both
through :mod:`.contract`. This package imports nothing itself, so the CuPy-free parts load
where CuPy is missing.
"""
