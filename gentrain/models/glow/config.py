"""Glow's configuration: everything needed to rebuild the model from a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass

from genrun.errors import UserError

from ..config import ModelConfig, class_weight_option, conditional_option, option

COUPLINGS = ("affine", "additive")


@dataclass
class GlowConfig(ModelConfig):
    data_shape: tuple[int, int, int]  # (C, H, W) of the uint8 images
    levels: int = option(2, "L: scales, each squeezes 2x2 and (but the last) factors out half.")
    depth: int = option(8, "K: flow steps per level.")
    # 64, not Glow's 128: at equal CPU time the cheaper model takes twice the
    # steps and ends lower (benchmarks/results/glow-sweep.md).
    hidden: int = option(64, "Channels of the coupling networks.")
    coupling: str = option("affine", "affine or additive.")
    lu: bool = option(True, "LU-decomposed 1x1 convolutions.")
    n_bits: int = option(
        8,
        "Pixel depth of the modelled density (default: the data's; 8, digits 5).",
        from_data="bits",
    )
    conditional: bool = conditional_option()
    class_weight: float = class_weight_option()
    # False where a config does not say (checkpoints from before it: the
    # class-conditional prior alone); a new --conditional fit turns it on.
    class_couplings: bool = option(
        False,
        "Conditional Glow: the label also enters every coupling network (learned biases per "
        "class on its hidden layers), not only the prior (default: on with --conditional).",
        conditional_default=True,
        conditional_only=True,
    )
    # Off by default: on MNIST it lowered bits/dim but also the classifier's
    # accuracy and the samples' class agreement (docs/conditional.md).
    class_actnorm: bool = option(
        False,
        "Conditional Glow: each flow step's ActNorm also takes a learned shift and log-scale "
        "per class and channel.",
        conditional_only=True,
    )
    class_counts: tuple[int, ...] = ()  # training images per class (from the data)
    class_names: tuple[str, ...] = ()  # by label index, where the data names them

    def __post_init__(self) -> None:
        self.data_shape = tuple(int(v) for v in self.data_shape)
        self.check_classes()
        if self.coupling not in COUPLINGS:
            raise UserError(
                f"unknown coupling '{self.coupling}'; use one of: {', '.join(COUPLINGS)}"
            )
        if not 1 <= self.n_bits <= 8:
            raise UserError(f"--n-bits must be in 1..8, got {self.n_bits}")
        if self.levels < 1 or self.depth < 1 or self.hidden < 1:
            raise UserError("--levels, --depth and --hidden must all be at least 1")
        _, height, width = self.data_shape
        factor = 2**self.levels
        if height % factor or width % factor:
            fits = max(
                lvl for lvl in range(0, self.levels) if height % 2**lvl == width % 2**lvl == 0
            )
            size = -(-max(height, width) // factor) * factor
            hint = f"--levels {fits} or " if fits >= 1 else ""
            raise UserError(
                f"images of {height}x{width} cannot be squeezed {self.levels} times "
                f"(sides must divide by {factor}); use {hint}--size {size}"
            )

    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """Shape (C, H, W) of the standard-normal latent each level hands out."""
        c, h, w = self.data_shape
        shapes = []
        for level in range(self.levels):
            c, h, w = c * 4, h // 2, w // 2
            if level < self.levels - 1:
                shapes.append((c // 2, h, w))
                c -= c // 2
            else:
                shapes.append((c, h, w))
        return shapes
