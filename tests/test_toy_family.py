"""A new family through the whole lifecycle, with nothing but its own code:
a toy model (one linear decoder under a standard-normal prior) and its one
graph are registered the way CONTRIBUTING.md says, then trained by `gentrain
fit toy` (whose options come from the toy's config), exported by `genexport
onnx` and sampled by genrun, which must draw exactly what the model decodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli
from torch import nn

import genrun
from genexport import cli as genexport_cli
from genexport.graphs import BATCH, Graph
from genrun.manifest import DECODE, IMAGES, PIXELS, PixelMapping, TensorSpec, Z
from genrun.sampler import BlockNoise
from gentrain import cli as gentrain_cli
from gentrain.checkpoint import load_checkpoint, model_from_checkpoint
from gentrain.models import FAMILIES, GenerativeModel, register_family
from gentrain.models.base import Objective
from gentrain.models.config import ModelConfig, option
from gentrain.models.quantization import means_to_uint8

GENTRAIN = InProcessCli(gentrain_cli.main, "gentrain")
GENEXPORT = InProcessCli(genexport_cli.main, "genexport")


# -- the family: gentrain/models/toy/{config,model}.py in a real one ------------------
@dataclass
class ToyConfig(ModelConfig):
    data_shape: tuple[int, int, int]
    latent_dim: int = option(4, "Size of the latent code.")


class Toy(GenerativeModel):
    """x = sigmoid(W z + b), z ~ N(0, I); trained to reconstruct the mean image."""

    family = "toy"
    roles = (DECODE,)  # the engine graphs it exports ...
    graphs = __name__  # ... built in this module: decode_graph, pixel_mapping
    label = "Toy"
    description = "a toy linear decoder; reports the test squared error"
    config_class = ToyConfig
    headline_metric = "mse"
    train_defaults: ClassVar = {"lr": 0.05, "batch_size": 16, "epochs": 1}

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.decoder = nn.Linear(config.latent_dim, config.num_dims)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z)).reshape(-1, *self.config.data_shape)

    def squared_error(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.decode(torch.zeros(len(x), self.config.latent_dim, device=x.device))
        return ((mean - x.float() / 255) ** 2).flatten(1).sum(1)

    def objective(self, x: torch.Tensor) -> Objective:
        loss = self.squared_error(x).mean()
        return Objective(loss, {"mse": loss.item()})

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, iw_samples: int = 1) -> dict[str, torch.Tensor]:
        return {"mse": self.squared_error(x)}

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        z = temperature * torch.randn(n, self.config.latent_dim, device=self.device)
        return means_to_uint8(self.decode(z))


# -- its graphs: genexport/graphs/toy.py in a real one ----------------------------------
class ToyDecode(nn.Module):
    def __init__(self, model: Toy) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.model.decode(z)
        return images, means_to_uint8(images)


def decode_graph(model: Toy, fold: bool = True) -> Graph:
    config = model.config
    shape = [BATCH, *config.data_shape]
    module = ToyDecode(model.eval())
    return Graph(
        role=DECODE,
        module=module,
        reference=module,
        inputs=[TensorSpec(Z, "float32", [BATCH, config.latent_dim], "latent code")],
        outputs=[
            TensorSpec(IMAGES, "float32", shape, "decoded pixels in [0, 1]"),
            TensorSpec(PIXELS, "uint8", shape, "images mapped to uint8"),
        ],
        sample_inputs=lambda n, g: (torch.randn(n, config.latent_dim, generator=g),),
        checks={IMAGES: "image", PIXELS: "pixels"},
        num_dims=config.num_dims,
        pixel_bits=8,
        temperature="the runtime feeds z = T noise",  # a prior to sample: genrun may
    )


def pixel_mapping(model: Toy) -> PixelMapping:
    return PixelMapping(8, [0.0, 1.0], "x01 = x / 255", "x = round(clip(x01, 0, 1) * 255)", 0.0)


@pytest.fixture
def toy_registered():
    """Register the toy family (graphs included) and its fit command; unregister after."""
    commands = list(gentrain_cli.fit_app.registered_commands)
    register_family(Toy)
    gentrain_cli.add_fit_command("toy")
    yield
    del FAMILIES["toy"]
    gentrain_cli.fit_app.registered_commands[:] = commands


def test_a_registered_family_fits_exports_and_samples(toy_registered, digits, tmp_path) -> None:
    code, out, err = GENTRAIN.run("fit", "toy", "--help")
    assert code == 0 and "--latent-dim" in out and "Size of the latent code." in out, err

    run = tmp_path / "toy"
    args = ("--latent-dim", 3, "--steps", 30, "--eval-every", 30, "--out", run)
    code, out, err = GENTRAIN.run("fit", "toy", *args)
    assert code == 0, err
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["family"] == "toy" and payload["model_config"]["latent_dim"] == 3
    assert payload["train_config"]["lr"] == 0.05  # the family's train_defaults
    model = model_from_checkpoint(payload).eval()
    torch.manual_seed(0)
    first = Toy(ToyConfig(model.config.data_shape, latent_dim=3))
    test = torch.as_tensor(digits.test.images)
    assert model.squared_error(test).mean() < 0.5 * first.squared_error(test).mean()

    code, out, err = GENEXPORT.run("onnx", run / "checkpoint.pt")
    assert code == 0 and "all parity checks passed" in out, err
    engine = genrun.load(run / "toy.decode.onnx")
    assert (engine.family, engine.role) == ("toy", "decode")

    images = genrun.Sampler(engine).sample(10, temperature=0.5, seed=2, batch_size=4)
    (noise,) = BlockNoise(2, [(3,)]).take(0, 10)
    with torch.no_grad():
        expected = means_to_uint8(model.decode(0.5 * torch.from_numpy(noise))).numpy()
    assert images.shape == (10, *model.config.data_shape)
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
