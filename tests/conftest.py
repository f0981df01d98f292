"""pytest configuration. The helpers the tests share live in tests/helpers.py; importing it here,
before any test module, sets TRITON_INTERPRET=1 on a machine without a GPU, so the Triton kernels
run (in Triton's interpreter) under the README's test command too."""

import tests.helpers  # noqa: F401
