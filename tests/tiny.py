"""Tiny configs shared by the unit tests: every code path, milliseconds per model."""

from rar_demo.config import RARConfig, VQGANConfig

TINY_RAR = RARConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    codebook_size=64,
    image_seq_len=16,
    condition_num_classes=5,
)
TINY_VQGAN = VQGANConfig(
    channel_mult=(1, 2),
    hidden_channels=32,
    num_res_blocks=1,
    resolution=8,
    z_channels=8,
    codebook_size=64,
)
