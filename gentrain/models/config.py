"""What every family's config dataclass shares: the image shape it was built
for, and the plain-dict form that checkpoints store (plain Python values, so
`torch.load(weights_only=True)` reads them back).

A field declared with `option(default, help)` is also an option of `gentrain
fit FAMILY` (--field-name, or `flag`): its default and help live here only."""

from __future__ import annotations

from dataclasses import asdict, field, fields
from typing import Any, TypeVar

from genrun.errors import UserError
from genrun.typed_json import parse

C = TypeVar("C", bound="ModelConfig")

# The range of every numeric config field, by name, declared once for all
# families: checked before a model is built, so a checkpoint claiming
# depth = 10**6 is refused in a line instead of building for minutes. The
# bounds are far beyond any model that trains here; sizes of tensors are
# checked against the checkpoint's own weights later (model_from_checkpoint).
FIELD_RANGES: dict[str, tuple[float, float]] = {
    "data_shape": (1, 4096),  # each of C, H, W
    "levels": (1, 16),
    "scales": (1, 16),
    "groups": (1, 32),
    "depth": (1, 512),
    "cells": (1, 64),
    "blocks": (0, 64),
    "hidden": (1, 16384),
    "latent_dim": (1, 65536),
    "latent_channels": (1, 4096),
    "n_bits": (1, 8),
    "kl_warmup": (0, 10**9),
    "sigma": (1e-6, 1e6),
    "class_counts": (1, 10**9),
    "class_weight": (0, 1e6),
}
# A class-conditional model holds parameters per class: bound their number
# (and their names' length) before anything is built.
MAX_CLASSES = 4096
MAX_CLASS_NAME = 200


def option(
    default: Any,
    help: str,
    flag: str | None = None,
    from_data: str | None = None,
    conditional_default: Any = None,
    conditional_only: bool = False,
) -> Any:
    """A dataclass field that the CLI offers as an option with `help`.
    `from_data` names a `DataSplit` attribute that gives the default when the
    option is not passed (the flows' n_bits: the data's own bit depth).
    `conditional_default` (if not None) is a new --conditional run's default;
    `default` stays what a stored config without the field means.
    `conditional_only`: set (truthy) only in a --conditional model's config
    (`ModelConfig.check_classes` refuses it elsewhere)."""
    metadata: dict[str, Any] = {"help": help, "flag": flag, "from_data": from_data}
    if conditional_default is not None:
        metadata["conditional_default"] = conditional_default
    if conditional_only:
        metadata["conditional_only"] = True
    return field(default=default, metadata=metadata)


def conditional_option() -> Any:
    """The `--conditional` option of the families that have a class-conditional
    form; its config also holds `class_counts` and `class_names`, which
    `new_model` fills from the data (see `check_classes`)."""
    return option(
        False,
        "Model p(x|y) for the data's class labels y (mnist, digits, folder: with one "
        "sub-folder per class, npz with labels).",
    )


def class_weight_option() -> Any:
    """The flows' `--class-weight`: how much a conditional flow's training
    also maximises its own classifier's log p(y|x) (see MultiScaleFlow.objective)."""
    return option(
        0.0,
        "Conditional flows: weight of the generative classifier's -log2 p(y|x) (bits per "
        "image) added to the bits/dim loss (openai/glow's weight_y; 0: p(x|y) alone).",
        conditional_only=True,
    )


class ModelConfig:
    """Base of the `@dataclass` configs; each has a `data_shape` (C, H, W) field.
    A config with a class-conditional form also has `conditional`,
    `class_counts` (training images per class: K and p(y)) and `class_names`
    (by label index, or empty where the data names none)."""

    @property
    def num_dims(self) -> int:
        """D: values per image."""
        c, h, w = self.data_shape
        return c * h * w

    @property
    def num_classes(self) -> int:
        """K for a class-conditional model, 0 for any other."""
        return len(self.class_counts) if getattr(self, "conditional", False) else 0

    def check_classes(self) -> None:
        """What `__post_init__` checks of the class fields: a conditional model
        knows K >= 2 classes (and at most one name each); another has none."""
        self.class_counts = tuple(int(c) for c in self.class_counts)
        self.class_names = tuple(str(n) for n in self.class_names)
        count = len(self.class_counts)
        if not self.conditional:
            given = [name for name in ("class_counts", "class_names") if getattr(self, name)]
            given += [
                "--" + f.name.replace("_", "-")
                for f in fields(self)
                if f.metadata.get("conditional_only") and getattr(self, f.name)
            ]
            if given:
                raise UserError(
                    f"{', '.join(given)}: these are for --conditional models only; add "
                    "--conditional (labelled data) or drop them"
                )
            return
        if not 2 <= count <= MAX_CLASSES:
            raise UserError(
                f"a conditional model needs 2..{MAX_CLASSES} classes, got {count}; train it on "
                "labelled data with `gentrain fit FAMILY --conditional`"
            )
        if self.class_names and (
            len(self.class_names) != count
            or len(set(self.class_names)) != count
            or not all(0 < len(name) <= MAX_CLASS_NAME for name in self.class_names)
        ):
            raise UserError(
                f"class_names must be {count} unique names of 1..{MAX_CLASS_NAME} characters; "
                "the checkpoint is damaged or not from gentrain"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """The config of stored or given values, each checked against its
        field's type and FIELD_RANGES (genrun.typed_json), then by the
        config's own __post_init__."""
        family = cls.__name__.removesuffix("Config")
        fix = (
            "the checkpoint is damaged, from another version of vaeflow or not from gentrain, "
            "or an option is out of range"
        )
        return parse(cls, values, f"{family} config", fix, ranges=FIELD_RANGES)
