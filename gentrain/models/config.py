"""What every family's config dataclass shares: the image shape it was built
for, and the plain-dict form that checkpoints store (plain Python values, so
`torch.load(weights_only=True)` reads them back).

A field declared with `option(default, help)` is also an option of `gentrain
fit FAMILY` (--field-name, or `flag`): its default and help live here only."""

from __future__ import annotations

from dataclasses import asdict, field, fields
from typing import Any, TypeVar

from genrun.errors import UserError

C = TypeVar("C", bound="ModelConfig")


def option(default: Any, help: str, flag: str | None = None, from_data: str | None = None) -> Any:
    """A dataclass field that the CLI offers as an option with `help`.
    `from_data` names a `DataSplit` attribute that gives the default when the
    option is not passed (the flows' n_bits: the data's own bit depth)."""
    return field(default=default, metadata={"help": help, "flag": flag, "from_data": from_data})


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
