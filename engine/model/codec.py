"""The audio codec: transformers' EncodecModel behind a two-method interface (codes in, audio out).

MusicGen's codec (facebook/encodec_32khz) has no normalisation and no chunking, so one waveform maps to one frame
of codes with no per-chunk scales; we keep it that way and refuse configurations that would need them.
"""

from __future__ import annotations

import math

import torch

from engine.errors import AudioError, CheckpointError
from engine.model.config import frame_rate


def encodec_config(num_codebooks: int, **fields):
    """transformers' EncodecConfig(**fields) with exactly `num_codebooks` RVQ layers, and a target bandwidth that
    encodes with all of them.

    transformers derives the layer count from the last target bandwidth, by a rule that changed between its versions
    (bandwidth / (frame rate x 10) before, / (frame rate x ceil(log2 codebook size)) since): the bandwidth is the one
    the installed version's own config turns into `num_codebooks`, the old rule's first (a config written here then
    reads the same under both wherever one bandwidth can: below 9 codebooks of 512), CheckpointError if none does."""
    from transformers import EncodecConfig

    shape = EncodecConfig(**fields)
    frame_rate = math.ceil(shape.sampling_rate / math.prod(shape.upsampling_ratios))  # the quantizer's (rounded up)
    # encode() uses floor(bandwidth / (frame rate x log2 codebook size)) codebooks: a hair above, never a rounding below
    exact = num_codebooks * math.log2(shape.codebook_size) * frame_rate / 1000 * (1 + 1e-9)
    for bits in (10, math.ceil(math.log2(shape.codebook_size))):
        layers = num_codebooks * frame_rate * bits / 1000
        # the first for encode() without a bandwidth, the last for the layer count
        bandwidths = [exact] if math.isclose(exact, layers, rel_tol=1e-6) else [exact, layers]
        config = EncodecConfig(**fields, target_bandwidths=bandwidths)
        if config.num_quantizers == num_codebooks:
            return config
    raise CheckpointError(f"this transformers version cannot make an EnCodec config with {num_codebooks} codebooks")


class Codec:
    """EnCodec wrapper: `encode(wav [B,1,N]) -> codes [B,K,F]`, `decode(codes [B,K,F]) -> wav [B,1,F*hop]`."""

    def __init__(self, model, num_codebooks: int | None = None, device: torch.device | str = "cpu") -> None:
        cfg = model.config
        if cfg.chunk_length_s is not None or cfg.normalize:
            # Chunked or normalised EnCodec returns several frames with scales; MusicGen's codec never does.
            raise CheckpointError("the audio codec uses chunking or normalisation, which MusicGen codecs never do")
        if cfg.audio_channels != 1:
            raise CheckpointError(f"the audio codec has {cfg.audio_channels} channels; only mono codecs are supported")
        self.model = model.eval().requires_grad_(False)
        self.sample_rate: int = int(cfg.sampling_rate)
        self.hop_length: int = int(math.prod(cfg.upsampling_ratios))
        self.frame_rate: float = frame_rate(self.sample_rate, cfg.upsampling_ratios)
        self.card: int = int(cfg.codebook_size)
        self.num_codebooks, self._bandwidth = _bandwidth_for(model, num_codebooks)
        # The codec stays in fp32: it is small next to the LM and its LSTM/convs lose audible quality in 16 bits.
        move_codec(self.model, device, torch.float32)
        self.device = torch.device(device)

    @torch.no_grad()  # not inference_mode: training feeds these outputs into autograd
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Mono waveform [B,1,N] at `sample_rate` -> codes [B,K,F] (long), F = ceil(N / hop_length)."""
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise AudioError(f"the codec takes mono audio shaped [batch, 1, samples], got {tuple(wav.shape)}")
        if wav.shape[-1] == 0:
            raise AudioError("the audio is empty")
        wav = wav.to(device=self.device, dtype=torch.float32)
        out = self.model.encode(wav, bandwidth=self._bandwidth, return_dict=True)
        codes = out.audio_codes  # [chunks=1, B, K, F]
        return codes[0, :, : self.num_codebooks].long()

    @torch.no_grad()  # not inference_mode: training feeds these outputs into autograd
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B,K,F] -> waveform [B,1,F*hop_length] (float32)."""
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise AudioError(f"codes must be shaped [batch, {self.num_codebooks}, frames], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.card):
            raise AudioError(f"codes must lie in [0, {self.card}); special tokens must be removed before decoding")
        codes = codes.to(device=self.device, dtype=torch.long)
        out = self.model.decode(codes[None], [None], return_dict=True)
        wav = out.audio_values  # [B, 1, F*hop]
        return wav[..., : codes.shape[-1] * self.hop_length].float()

    def num_frames(self, num_samples: int) -> int:
        """Frames the codec yields for `num_samples` samples."""
        return math.ceil(num_samples / self.hop_length)


# EnCodec's convolutions keep their sizes (stride, kernel_size, padding_total) as 0-dim int buffers and pad by their
# values: on a GPU each read is a copy to the host and a wait on the device (128 a codec training step, 72 an encode,
# counted on the CPU by a review). They are not saved (non-persistent): kept on the CPU they are read for nothing.
_HOST_SIZES = ("stride", "kernel_size", "padding_total")


def move_codec(model: torch.nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """`model.to(device, dtype)`, its convolutions' size buffers (_HOST_SIZES) kept on the CPU."""
    sizes = []
    for module in model.modules():
        for name in _HOST_SIZES:
            size = module._buffers.get(name)
            if size is not None and size.dim() == 0 and not size.is_floating_point() and not size.is_meta:
                sizes.append((module, name, size.cpu()))
    model.to(device=device, dtype=dtype)
    for module, name, size in sizes:
        module._buffers[name] = size
    return model


def _bandwidth_for(model, num_codebooks: int | None) -> tuple[int, float]:
    """The smallest target bandwidth giving at least `num_codebooks` codebooks (all of them when None)."""
    quantizer = model.quantizer
    options = sorted(model.config.target_bandwidths)
    if num_codebooks is None:
        best = options[-1]
        return quantizer.get_num_quantizers_for_bandwidth(best), best
    for bandwidth in options:
        if quantizer.get_num_quantizers_for_bandwidth(bandwidth) >= num_codebooks:
            return num_codebooks, bandwidth
    most = quantizer.get_num_quantizers_for_bandwidth(options[-1])
    raise CheckpointError(f"the audio codec provides {most} codebooks but the model needs {num_codebooks}")
