"""Triton kernels of nerfx, installed as nerfx.kernels. Importing a submodule needs triton."""
