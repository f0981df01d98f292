#!/usr/bin/env bash
# Downloads, on a machine with PyPI, the benchmark peers the GPU machine lacks (it has no network)
# as Python 3.12 wheels into .whl/ (kept out of git); gpu_check.sh installs them from there when
# the device call carries `.whl`. nerfacc compiles its CUDA code on first use (about 40 s).
# usage: benches/fetch_peer_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# .whl/ is in .gitignore (.git is a file in a worktree: no info/exclude to write there).
# The peers, and what they import that the device image lacks (KINDS.md's package list).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  nerfacc==0.5.3 diffusers==0.42.1 denoising-diffusion-pytorch==2.3.4 \
  ema-pytorch pytorch-fid importlib-metadata \
  timm==1.0.31 torchvision==0.26.0  # timm's ViT row; torchvision 0.26 is torch 2.11's
ls -l .whl
du -sh .whl
