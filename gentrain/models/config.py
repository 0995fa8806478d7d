"""What every family's config dataclass shares: the image shape it was built
for, and the plain-dict form that checkpoints store (plain Python values, so
`torch.load(weights_only=True)` reads them back)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

from genrun.errors import UserError

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Base of the `@dataclass` configs; each has a `data_shape` (C, H, W) field."""

    @property
    def num_dims(self) -> int:
        """D: values per image."""
        c, h, w = self.data_shape
        return c * h * w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            family = cls.__name__.removesuffix("Config")
            raise UserError(
                f"unknown {family} config keys: {', '.join(sorted(unknown))}; the checkpoint "
                "comes from another version of vaeflow"
            )
        return cls(**values)
