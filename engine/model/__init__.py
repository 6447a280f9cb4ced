"""What runs an edit: the MusicGen decoder with Instruct-MusicGen's adapters, its decode loop, codec and text encoder.

config (sizes) -> lm (the decoder) built on attention (pieces shared with fusion, the adapters); generate (the
decode loop) with fast_decode (the one-token step of small models); codec, text, delay (the codes' pattern); bundle
(a loaded model with its card). This file imports nothing: `from engine.model import delay` pays only for delay.
"""
