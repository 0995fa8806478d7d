"""Class-conditional models (gentrain fit ... --conditional): the class prior
is an exact invertible layer, log p(x|y) for every class from one pass equals
the per-class densities, the marginal and the generative classifier, labelled
data and its refusals, the CVAE's label bias is the one-hot concatenation,
exact resume, and unconditional checkpoints untouched."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from cli_helpers import InProcessCli
from flow_helpers import assert_invertible
from PIL import Image

from genrun.errors import UserError
from genrun.labels import class_index, parse_label, read_labels
from genrun.readers import load_data
from gentrain.checkpoint import load_checkpoint
from gentrain.cli import main
from gentrain.models import VAE, Glow, GlowConfig, RealNVP, RealNVPConfig, VAEConfig
from gentrain.models.transforms import ClassStandardize
from gentrain.train import TrainConfig, Trainer

CLI = InProcessCli(main, "gentrain")
COUNTS = (5, 3, 4)  # three classes


def _perturb(module: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def _flow(cls=Glow, config=GlowConfig, **options):
    torch.manual_seed(0)
    model = cls(config((1, 8, 8), conditional=True, class_counts=COUNTS, **options))
    model.objective(
        torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), torch.arange(16) % 3
    )  # ActNorm init
    _perturb(model, 0.02)
    return model.eval()


def test_class_standardize_inverts_with_an_exact_logdet_and_mixes_classes() -> None:
    torch.manual_seed(0)
    layer = ClassStandardize(3, (2, 4, 4))
    _perturb(layer, 0.5)
    u, label = torch.randn(5, 2, 4, 4), torch.tensor([0, 2, 1, 1, 0])
    assert_invertible(layer, u, label, tol=1e-5, logdet_tol=1e-8)
    eps, logabsdet = layer.double()(u.double(), label)
    every, every_logabsdet = layer.every_class(u.double())
    assert torch.allclose(every[torch.arange(5), label], eps)
    assert torch.allclose(every_logabsdet[label], logabsdet)
    one_hot = torch.nn.functional.one_hot(label, 3).double()
    assert torch.allclose(layer(u.double(), one_hot)[0], eps)  # a soft label of one class


@pytest.mark.parametrize("family", ["glow", "realnvp"])
def test_every_class_at_once_equals_each_class_and_the_metrics_follow(family) -> None:
    if family == "glow":
        model = _flow(depth=2, hidden=8)
    else:
        model = _flow(RealNVP, RealNVPConfig, hidden=8)
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    label = torch.tensor([0, 1, 2, 0, 1, 2])
    y = (x.float() + 0.5) / 256 - 0.5
    by_class = model.class_log_probs(y)
    for c in range(3):
        assert torch.allclose(by_class[:, c], model.log_prob(y, torch.full((6,), c)), atol=1e-4)
    latents, _ = model(y, label)  # the conditional latents invert to the images
    assert (model.reverse(latents, 1.0, label) - y).abs().max() < 1e-4

    torch.manual_seed(3)
    metrics = model.evaluate(x, label=label)
    log_prior = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)).float()
    at_centers = model.class_log_probs(y)
    expected_accuracy = ((at_centers + log_prior).argmax(1) == label).float()
    assert torch.equal(metrics["accuracy"], expected_accuracy)
    # The marginal p(x) = sum_y p(x|y) p(y) is at least p(x|label) p(label).
    nats = 64 * math.log(2)
    bound = metrics["bpd"] - log_prior[label] / nats
    assert (metrics["bpd_marginal"] <= bound + 1e-5).all()


def test_a_fresh_class_prior_is_the_identity_and_unconditional_models_are_unchanged() -> None:
    torch.manual_seed(0)
    plain = Glow(GlowConfig((1, 8, 8), depth=2, hidden=8))
    torch.manual_seed(0)
    conditional = Glow(
        GlowConfig((1, 8, 8), depth=2, hidden=8, conditional=True, class_counts=COUNTS)
    )
    extra = set(conditional.state_dict()) - set(plain.state_dict())
    assert extra == {f"class_priors.{i}.{p}" for i in range(2) for p in ("mean", "logs")}
    y = torch.rand(4, 1, 8, 8) - 0.5
    plain.eval(), conditional.eval()
    assert torch.allclose(conditional.log_prob(y, torch.tensor([0, 1, 2, 0])), plain.log_prob(y))
    # A checkpoint's config from before conditional models loads as it was.
    old = {k: v for k, v in plain.config.to_dict().items() if "class" not in k}
    assert GlowConfig.from_dict(old).num_classes == 0
    with pytest.raises(ValueError, match="needs class labels"):
        conditional.sample(2)
    with pytest.raises(ValueError, match="takes no labels"):
        plain.sample(2, label=1)


def test_the_cvae_label_bias_is_concatenating_a_one_hot_label() -> None:
    torch.manual_seed(0)
    model = VAE(
        VAEConfig((1, 8, 8), latent_dim=3, hidden=16, conditional=True, class_counts=COUNTS)
    )
    _perturb(model, 0.3)
    x, label = torch.rand(4, 1, 8, 8), torch.tensor([2, 0, 1, 2])
    first = model.encoder.net[1]  # Flatten, then the first Linear
    concat = torch.nn.Linear(64 + 3, 16)
    with torch.no_grad():
        concat.weight.copy_(torch.cat([first.weight, model.encoder.label_bias.T], 1))
        concat.bias.copy_(first.bias)
    one_hot = torch.nn.functional.one_hot(label, 3).float()
    hidden = torch.relu(concat(torch.cat([x.flatten(1), one_hot], 1)))
    expected = model.encoder.net[3:](hidden)
    assert torch.allclose(model.encoder.run(x, label), expected, atol=1e-6)
    # The decoder under importance sampling: K samples share their image's label.
    z = torch.randn(5, 4, 3)
    params = model.decode(z, label)
    for k in range(5):
        assert torch.allclose(params[k], model.decode(z[k], label), atol=1e-6)
    metrics = model.evaluate((x * 255).to(torch.uint8), iw_samples=4, label=label)
    assert {"accuracy", "bpd_marginal", "nll_marginal"} <= set(metrics)


def test_labelled_data_gives_classes_and_unlabelled_data_is_refused(tmp_path) -> None:
    for name, value in (("cat", 0), ("dog", 255), ("emu", 128)):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), value).save(tmp_path / "pets" / name / f"{i}.png")
    pets = load_data(f"folder:{tmp_path / 'pets'}", size=8)
    assert pets.class_names == ("cat", "dog", "emu") and sum(pets.class_counts()) == 11
    np.savez(
        tmp_path / "named.npz",
        images=np.zeros((10, 8, 8), np.uint8),
        labels=np.arange(10) % 2,
        class_names=np.array(["even", "odd"]),
    )
    assert load_data(f"npz:{tmp_path / 'named.npz'}").class_names == ("even", "odd")
    np.savez(tmp_path / "bare.npz", images=np.zeros((10, 8, 8), np.uint8))
    CLI.assert_one_line_error(
        CLI.run(
            "fit",
            "glow",
            "--conditional",
            "--data",
            f"npz:{tmp_path / 'bare.npz'}",
            "--out",
            tmp_path / "run",
        ),
        "has no class labels",
    )
    assert not (tmp_path / "run").exists()


def test_labels_parse_by_name_or_index_and_read_from_files(tmp_path) -> None:
    assert class_index("3", None, 10) == 3
    assert class_index("1", ("7", "1"), 2) == 1  # a name wins over an index
    assert parse_label("all", ("cat", "dog"), 2) == [0, 1]
    with pytest.raises(UserError, match=r"unknown class 'cow'.*cat, dog"):
        class_index("cow", ("cat", "dog"), 2)
    (tmp_path / "labels.csv").write_text("file,class\na.png,dog\nb.png,0\n")
    assert read_labels(tmp_path / "labels.csv", 2, ("cat", "dog"), 2).tolist() == [1, 0]
    np.save(tmp_path / "labels.npy", np.array([1, 1, 0]))
    with pytest.raises(UserError, match="3 labels for 2 images"):
        read_labels(tmp_path / "labels.npy", 2, None, 2)


def test_conditional_training_resumes_exactly(digits, tmp_path) -> None:
    def glow():
        torch.manual_seed(0)
        counts = digits.class_counts()
        config = GlowConfig(
            digits.shape, depth=1, hidden=8, n_bits=5, conditional=True, class_counts=counts
        )
        return Glow(config)

    def config(steps):
        return TrainConfig(steps=steps, batch_size=16, eval_every=100, ckpt_every=3, device="cpu")

    whole = Trainer(glow(), digits, config(6), tmp_path / "a")
    whole.fit()
    Trainer(glow(), digits, config(3), tmp_path / "b").fit()
    payload = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    resumed = Trainer(glow(), digits, config(6), tmp_path / "b", resume=payload)
    resumed.fit()
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert whole.model.class_priors[0].mean.abs().sum() > 0  # the class layers trained


def test_fit_eval_and_sample_by_class_on_the_digits(tmp_path) -> None:
    """A tiny conditional Glow learns the digits' classes well above chance in
    60 steps; eval prints the classifier's accuracy; sample --label all draws
    one row per class."""
    out = tmp_path / "run"
    code, _, err = CLI.run(
        "fit",
        "glow",
        "--conditional",
        "--levels",
        "2",
        "--depth",
        "2",
        "--hidden",
        "16",
        "--steps",
        "60",
        "--eval-every",
        "60",
        "--out",
        out,
    )
    assert code == 0, err
    code, text, err = CLI.run("eval", out / "checkpoint.pt", "--json", tmp_path / "m.json")
    assert code == 0, err
    accuracy = json.loads((tmp_path / "m.json").read_text())["metrics"]["accuracy"]["mean"]
    assert accuracy > 0.4, accuracy  # chance is 0.1
    assert f"test accuracy {accuracy:.2%}" in text
    code, text, err = CLI.run(
        "sample", out / "checkpoint.pt", "--label", "all", "--n", "3", "--out", tmp_path / "g.png"
    )
    assert code == 0 and "wrote 30 samples" in text, err
    CLI.assert_one_line_error(
        CLI.run("sample", out / "checkpoint.pt", "--label", "ten", "--out", tmp_path / "x.png"),
        "unknown class 'ten'",
    )


def test_class_weight_adds_the_classifiers_bits_to_the_loss() -> None:
    """--class-weight w: loss = bpd + w * (-log2 p(label|x)), p(y|x) the
    model's own generative classifier, on the same dequantisation draw."""
    model = _flow(depth=2, hidden=8, class_weight=0.5).train()
    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    label = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(4)
    objective = model.objective(x, label)
    torch.manual_seed(4)
    y = (x.float() + torch.rand(x.shape)) / 256 - 0.5
    log_prior = torch.log(torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)).float()
    posterior = torch.log_softmax(model.class_log_probs(y) + log_prior, 1)
    bits_y = -posterior[torch.arange(6), label].mean() / math.log(2)
    assert objective.metrics["bits_y"] == pytest.approx(bits_y.item(), rel=1e-5)
    expected = objective.metrics["bpd"] + 0.5 * objective.metrics["bits_y"]
    assert objective.loss.item() == pytest.approx(expected, rel=1e-6)
    objective.loss.backward()
    assert model.class_priors[0].mean.grad.abs().sum() > 0
    with pytest.raises(UserError, match="for --conditional models"):
        GlowConfig((1, 8, 8), class_weight=1.0)
