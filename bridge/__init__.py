"""The wire around the engine: OSC protocol, server, client, audio I/O, batch, CLI.

Client modules never import torch.
"""

__version__ = "0.1.0"
