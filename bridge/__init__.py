"""The wire around the engine: OSC protocol, server, client, audio I/O, batch, CLI.

Client modules never import torch.
"""

from engine import __version__  # written once, in engine/__init__.py (the package metadata reads it too)

__all__ = ["__version__"]
