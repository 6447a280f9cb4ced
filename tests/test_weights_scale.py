"""Loading at a real decoder shape (musicgen-small: 24 layers x 1024, 4 codebooks of 2048): the weights are moved
into our model, not copied. Slow: writes ~1.7 GB."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from engine.tools.tiny_models import tiny_musicgen, write_transformers_layout

# Runs in a fresh process so that its peak memory is the load's, not the test's (which built the model).
_LOAD = """
import json, resource, sys
import torch, transformers
from engine.weights import load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = load_model(sys.argv[1], device="cpu", dtype="fp32")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"grown": after - before, "head": model.lm.heads[3].weight[:2, :4].tolist(),
                  "layers": model.lm.cfg.num_layers, "card": model.lm.cfg.card}))
"""


@pytest.mark.slow
def test_small_shape_loads_without_a_second_copy(tmp_path):
    hf_model = tiny_musicgen(seed=0, num_layers=24, dim=1024, ffn_dim=2048, card=2048)  # half small's ffn: less disk
    path = write_transformers_layout(tmp_path / "small", model=hf_model)
    decoder_bytes = 4 * sum(p.numel() for n, p in hf_model.named_parameters() if n.startswith("decoder."))
    reference = hf_model.decoder.lm_heads[3].weight[:2, :4].detach().clone()
    del hf_model
    out = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert (report["layers"], report["card"]) == (24, 2048)
    assert torch.equal(torch.tensor(report["head"]), reference)
    # one copy at most (safetensors pages stay memory-mapped); a second copy would add another decoder_bytes
    assert report["grown"] < 1.5 * decoder_bytes, (report["grown"], decoder_bytes)
