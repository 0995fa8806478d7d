"""RealNVP's configuration: everything needed to rebuild the model from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from genrun.errors import UserError

from ..config import ModelConfig, class_weight_option, conditional_option, option

NORMS = ("actnorm", "batchnorm")


@dataclass
class RealNVPConfig(ModelConfig):
    data_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images
    # Each scale but the last: 3 checkerboard couplings, squeeze, 3 channel couplings.
    scales: int = option(2, "Scales (each but the last squeezes 2x2 and factors out half).")
    hidden: int = option(32, "Channels of the coupling networks.")
    blocks: int = option(1, "Residual blocks per coupling network.")
    norm: str = option("actnorm", "actnorm or batchnorm, after every coupling and in the nets.")
    n_bits: int = option(
        8,
        "Pixel depth of the modelled density (default: the data's; 8, digits 5).",
        from_data="bits",
    )
    conditional: bool = conditional_option()
    class_weight: float = class_weight_option()
    class_counts: tuple[int, ...] = ()  # training images per class (from the data)
    class_names: tuple[str, ...] = ()  # by label index, where the data names them

    def __post_init__(self) -> None:
        self.data_shape = tuple(int(v) for v in self.data_shape)
        self.check_classes()
        if self.norm not in NORMS:
            raise UserError(f"unknown norm '{self.norm}'; use one of: {', '.join(NORMS)}")
        if not 1 <= self.n_bits <= 8:
            raise UserError(f"--n-bits must be in 1..8, got {self.n_bits}")
        if self.scales < 1 or self.hidden < 1 or self.blocks < 0:
            raise UserError("--scales and --hidden must be at least 1, --blocks at least 0")
        _, height, width = self.data_shape
        if not _squeezable(height, width, self.scales):
            fits = [s for s in range(1, self.scales) if _squeezable(height, width, s)]
            factor = 2 ** (self.scales - 1)
            size = max(2 * factor, -(-max(height, width) // factor) * factor)
            hint = f"--scales {fits[-1]} or " if fits else ""
            raise UserError(
                f"images of {height}x{width} cannot be squeezed {self.scales - 1} times down to "
                f"at least 2x2 (sides must divide by {factor}); use {hint}--size {size}"
            )

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Shape (C, H, W) of the standard-normal latent each scale hands out:
        half the channels after each squeeze, everything left at the last."""
        c, h, w = self.data_shape
        shapes = []
        for _ in range(self.scales - 1):
            c, h, w = c * 4, h // 2, w // 2
            shapes.append((c // 2, h, w))
            c -= c // 2
        shapes.append((c, h, w))
        return shapes


def _squeezable(height: int, width: int, scales: int) -> bool:
    """scales - 1 squeezes fit, leaving the last scale's checkerboard both colours."""
    factor = 2 ** (scales - 1)
    return height % factor == width % factor == 0 and min(height, width) // factor >= 2
