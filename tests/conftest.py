"""pytest configuration. The helpers the tests share live in tests/helpers.py; importing it here,
before any test module, sets TRITON_INTERPRET=1 on a machine without a GPU, so the Triton kernels
run (in Triton's interpreter) under the README's test command too."""

import os
import tempfile

import tests.helpers  # noqa: F401

# torch.compile's on-disk caches (/tmp/torchinductor_<user> by default) can hold graphs of an
# op whose schema has since changed (another checkout, another torch): each run gets its own.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nerfx-inductor-"))
