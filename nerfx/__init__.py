"""nerfx: landmark papers of neural rendering and generative modelling, with fast kernels.

Importing nerfx never fails and never touches a GPU: the compiled extension loads on first use.
"""

__version__ = "0.1.0"
