"""pytest configuration. The helpers the tests share live in tests/helpers.py; importing it here,
before any test module, sets TRITON_INTERPRET=1 on a machine without a GPU, so the Triton kernels
run (in Triton's interpreter) under the README's test command too."""

import os
import tempfile

import tests.helpers  # noqa: F401

# torch.compile's on-disk caches (/tmp/torchinductor_<user> by default) can hold graphs of an
# op whose schema has since changed (another checkout, another torch): each run gets its own.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="nerfx-inductor-"))


if os.environ.get("NERFX_PEAK_MEMORY_LOG"):
    import pytest
    import torch

    @pytest.fixture(autouse=True)
    def _record_peak_gpu_memory(request):
        """benches/gpu_check.sh: each CUDA test's peak torch.cuda.max_memory_allocated, one line
        `bytes<TAB>node id` a test, into $NERFX_PEAK_MEMORY_LOG.<xdist worker>. Tests that never
        touched CUDA are not recorded (nor is CUDA initialised for them)."""
        if torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
        yield
        if torch.cuda.is_initialized():
            peak = torch.cuda.max_memory_allocated()
            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            with open(f"{os.environ['NERFX_PEAK_MEMORY_LOG']}.{worker}", "a") as log:
                log.write(f"{peak}\t{request.node.nodeid}\n")
