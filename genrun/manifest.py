"""The engine manifest: what an exported ONNX graph is, in one JSON value
stored inside the file, so that a single `.onnx` file is a complete engine.

This module is the contract between `genexport` (writes it) and `genrun`
(reads it): a schema, with no file I/O and nothing of genrun imported
(tests/test_import_cycles.py holds it to that). JSON text, files, the checks
of what is read and the check against a graph are genrun/manifest_io.py's job.

Where it lives: the ONNX model's `metadata_props` entry `vaeflow.manifest`
(`METADATA_KEY`), a JSON object of the `Manifest` below.

Fields (version 3; version 2 is version 3 without graph_sha256, version 1 also
without training_scores; both read; version 4 is version 3 with classes or
provenance, written only where they are)
------------------
version         int, MANIFEST_VERSION. A reader refuses versions it does not know
                (READABLE_VERSIONS).
family          "glow", "realnvp", "vae", "hvae" (hierarchical VAE) or "ae"
                (deterministic autoencoder).
role            the graph's job: glow and realnvp "generate" | "density";
                vae "decode" | "encode" | "elbo"; hvae "generate" | "elbo";
                ae "decode" | "encode"
                (ae decode maps codes of real images back; an AE has no
                prior, so it is not a sampler).
precision       "fp32", or "fp16" (float16 inside, float32 at the inputs and
                outputs; per-image sums such as log-dets and log-likelihoods
                are reduced and accumulated in float32), or "bf16" (the layers
                of precision_plan take bfloat16 inputs and weights, the rest is
                float32; runs on OpenVINO, genrun/backends/openvino.py).
inputs, outputs list of TensorSpec, in graph order:
  name          the ONNX input/output name.
  dtype         numpy dtype name: "float32", "uint8" or "int64" (labels).
  shape         list; ints are fixed sizes, the string "N" marks the batch
                axis (dynamic; every tensor of one call shares it).
  description   what the tensor holds, in words.
  default       inputs only: value used when the input is not fed, or null
                when it must be fed (glow density's "offset": 0.5).
data_shape      [C, H, W] of the uint8 images the model was trained on.
latent_shapes   glow, realnvp: [C, H, W] of the standard-normal latent of each level,
                in level order (inputs noise_i of generate, outputs latent_i
                of density); hvae: [C, H, W] of each group's latent z_1 ... z_L,
                top group first (inputs noise_l of generate, eps_l of elbo;
                a sampler holding the first m fixed shares z_1 ... z_m);
                vae and ae: [[k]].
pixels          PixelMapping, how float images relate to uint8 pixels:
  n_bits        pixel depth the density is defined over (vae: 8 grey, 1 binary).
  value_range   [low, high] of the float "images" outputs (glow [-0.5, 0.5],
                vae and ae [0, 1]).
  from_uint8    formula the graph applies to uint8 inputs.
  to_uint8      formula that maps the float "images" to uint8; the graphs'
                "pixels" outputs are exactly this, so runtimes need not apply it.
  discretization_nats  D log(2^n_bits) (glow; vae Gaussians: D log 256; 0 for
                masses, and for ae, which has no density): the nats that turn
                a density of the floats into a probability of the uint8 image.
                VAE importance-sampled NLL in bits/dim =
                (-(logsumexp_k log_weight_k - log K) + this) / (D ln 2).
  likelihood    vae and hvae: the decoder likelihood and what "images" holds.
temperature     how the sampling temperature acts, or null when the role does
                not sample from a prior (a sampler refuses such an engine: the
                ae decode graph). glow generate: each noise_i is multiplied by
                the per-sample temperature before the reverse flow; 1 is the
                model, 0 the mode; hvae generate: z_l = mu_l + T sigma_l noise_l
                under each group's prior, 0 giving the prior means group by
                group; vae decode: the runtime feeds z = T noise.
checkpoint      CheckpointInfo: file name, sha256 of the checkpoint file, training
                step, the last test metrics the checkpoint recorded, model
                config and data {spec, shape}.
parity          list of Parity, one per comparison made before the file was
                written (fp32: against PyTorch; fp16: the float32 graph against
                PyTorch, then this graph against the float32 graph):
  precision     precision of the graph that was checked ("fp32" or "fp16").
  reference     what it was compared with: "pytorch-float32" or "onnx-float32".
  batch_sizes   batch sizes run.
  max_abs_error per checked value: output names, plus "round_trip.images" and
                "round_trip.pixels" for flows exported with both roles (uint8
                images -> density latents -> generate -> images). "pixels" are
                in uint8 levels; log-likelihoods in nats.
  tolerance     the bound each value had to meet (same keys).
export          ExportInfo: exporter ("torch.onnx dynamo" or "torch.onnx
                torchscript"), opset, nodes (in this file's graph), and for
                glow the float32 graph's node count after folding ActNorm into
                the 1x1 convolutions (nodes_folded; null for other families)
                and before (nodes_unfolded: optional, null unless the export
                was asked for it with `genexport onnx --count-unfolded`, which
                costs a second export; Glow manifests written before that
                option always carry it), and library versions {torch, onnx,
                onnxruntime, vaeflow, ...}.
classes         list of ClassSpec, or absent/null (version 4, conditional engines
                only: trained with --conditional). Each class's index (its label), its
                name where the data named it (a folder's sub-folder, an npz's
                class_names; null for bare indices such as MNIST's) and log_prior =
                log p(y), its share of the training images. A conditional generate,
                decode, density or elbo graph takes the input "label" (int64 (N,),
                0..K-1); a conditional flow's marginal density engine (role density,
                `genexport onnx --marginal`) takes none and also outputs
                "class_log_likelihood", log P(x|y) (N, K).
provenance      Provenance, or absent/null (version 4; the engines that ship in
                genrun/builtin): the script and the exact commands that made the
                engine, its training data with licence and citation, and what was
                measured (test bits/dim, classification accuracy, ...).
training_scores TrainingScores or null (density and elbo roles, since version 2;
                null when export could not read the training data): the
                bits/dim bound genrun's Scorer computes, over training images,
                for the typicality score (Nalisnick et al. 2019):
  data          the data spec the images came from.
  split         "train".
  images        how many (the first ones of the split).
  iw_samples    draws K per image of the bound (offsets or latents), and
  seed          their seed: typicality scores with the same k.
  bpd_mean      mean bits/dim of those images.
  bpd_std       their standard deviation (ddof 1).
graph_sha256    hex sha256 of the ONNX file's bytes outside its metadata (the
                graph, weights, opsets: `genrun.manifest_io.graph_sha256`),
                or null (versions 1 and 2). genrun's ONNX loader refuses a
                file whose graph no longer matches (since version 3).
precision_plan  PrecisionPlan or null (bf16 engines):
  runtime       what runs the engine ("openvino").
  reduced_layers / float32_layers  regions (named by their first node) that
                compute in bf16 / stay float32 because alone in bf16 they
                moved a user-terms figure past its bound.
  reduced_flop_share  share of the counted FLOPs in bf16.
  layer_effects per region, its worst figure alone in bf16 / that bound.
  speedup       its speed over the fp32 engine's at export, on the exporting
                CPU (null in engines written before it was measured).
                The parity entry of precision "bf16" holds the user-terms
                figures against the float32 graph (genexport.precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MANIFEST_VERSION = 3
READABLE_VERSIONS = (1, 2, 3, 4)  # version 2: no graph_sha256; version 1: no training_scores either
# Version 4: version 3 with `classes` or `provenance`, written only where they
# are (so an older reader refuses those engines in one line and reads every other).
CONDITIONAL_VERSION = 4
METADATA_KEY = "vaeflow.manifest"

# The roles of graphs, written once: a model family lists the ones it exports
# (gentrain.models.GenerativeModel.roles), the manifest names one, runtimes
# take the ones they can run.
GENERATE = "generate"  # noise (and temperature) -> images, pixels (flows, hvae)
DENSITY = "density"  # uint8 images (and offset) -> log P(x), bits/dim, latents (flows)
DECODE = "decode"  # a latent code -> images, pixels (vae, ae)
ENCODE = "encode"  # uint8 images -> the posterior's or the code (vae, ae)
ELBO = "elbo"  # uint8 images and posterior noise -> one importance weight (vae, hvae)
SAMPLING_ROLES = (GENERATE, DECODE)  # what Sampler draws from (with a prior)
SCORING_ROLES = (DENSITY, ELBO)  # what Scorer bounds -log P(x) with

# The names of the tensors, written once: graphs declare them, runtimes look
# them up. The batch axis is the string BATCH in every shape.
BATCH = "N"
IMAGES = "images"  # uint8 images in (encode, density, elbo); float images out (generate, decode)
PIXELS = "pixels"  # uint8 images out: the float images mapped by PixelMapping.to_uint8
TEMPERATURE = "temperature"  # per-sample scale of the noise (N,)
OFFSET = "offset"  # dequantisation offset of a density graph
LOG_LIKELIHOOD = "log_likelihood"  # exact log P(x) in nats (density)
BITS_PER_DIM = "bits_per_dim"
LOG_WEIGHT = "log_weight"  # one importance weight log w in nats (elbo)
Z = "z"  # a latent code (decode input, autoencoder encode output)
MU = "mu"  # mean of q(z|x) (vae encode)
LOGVAR = "logvar"  # log variance of q(z|x) (vae encode)
EPS = "eps"  # N(0, I) noise of the reparameterisation (vae elbo)
LABEL = "label"  # class labels int64 (N,) of a conditional engine
CLASS_LOG_LIKELIHOOD = "class_log_likelihood"  # log P(x|y) (N, K) (marginal density)


def missing_manifest(path: object, purpose: str) -> str:
    """The refusal of a graph without a manifest (a foreign ONNX file) for a
    `purpose` that needs one, such as "sampling"."""
    return (
        f"{path} holds no vaeflow manifest (metadata key {METADATA_KEY!r}), which {purpose} "
        "needs (family, role, data and latent shapes, pixel mapping); re-export the model "
        "with `genexport onnx CKPT`"
    )


def noise_name(i: int) -> str:
    """Input i of the per-level (flows) or per-group (hvae) noise of generate."""
    return f"noise_{i}"


def latent_name(i: int) -> str:
    """Output i of a flow's density graph: the latent of level i."""
    return f"latent_{i}"


def eps_name(i: int) -> str:
    """Input i of the hvae elbo graph: the posterior noise of group i."""
    return f"{EPS}_{i}"


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]
    description: str = ""
    default: float | None = None


@dataclass
class PixelMapping:
    n_bits: int
    value_range: list[float]
    from_uint8: str
    to_uint8: str
    discretization_nats: float
    likelihood: str | None = None


@dataclass
class CheckpointInfo:
    file: str
    sha256: str
    step: int
    metrics: dict[str, float]
    model_config: dict[str, Any]
    data: dict[str, Any]


@dataclass
class Parity:
    precision: str
    reference: str
    batch_sizes: list[int]
    max_abs_error: dict[str, float]
    tolerance: dict[str, float]
    # Per output, the reference's own float32 rounding (max |float32 - float64|)
    # that a tolerance was scaled by: how ill-conditioned the model is there.
    conditioning: dict[str, float] = field(default_factory=dict)
    # Values finite on one side only, each with the input that produced it.
    misses: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """'name error > tolerance' for every value over its bound, then every miss."""
        over = [
            f"{key} {error:.3g} > {self.tolerance[key]:.3g}"
            for key, error in self.max_abs_error.items()
            if not error <= self.tolerance[key]  # NaN fails too
        ]
        return over + self.misses


@dataclass
class ExportInfo:
    exporter: str
    opset: int
    nodes: int
    nodes_unfolded: int | None
    nodes_folded: int | None
    versions: dict[str, str]


@dataclass
class TrainingScores:
    data: str
    split: str
    images: int
    iw_samples: int
    seed: int
    bpd_mean: float
    bpd_std: float

    def summary(self) -> str:
        return (
            f"bits/dim {self.bpd_mean:.4f} (std {self.bpd_std:.4f}) over the first "
            f"{self.images} {self.split} images of {self.data}, K = {self.iw_samples}, "
            f"seed {self.seed}"
        )


@dataclass
class PrecisionPlan:
    """Which layers of a reduced-precision engine compute in it (bf16: the
    regions of convolutions and matrix products, with the ReLUs between them,
    that take bfloat16 inputs and weights), decided by measuring each one's
    effect on the user-terms parity (genexport.precision)."""

    runtime: str  # what runs the engine: "openvino"
    reduced_layers: list[str]  # first node of each region computing in bf16
    float32_layers: list[str]  # regions kept in float32: over a bound in bf16
    reduced_flop_share: float  # share of the counted FLOPs that run in bf16
    # Per region, its effect alone in bf16: the worst figure / its bound.
    layer_effects: dict[str, float] = field(default_factory=dict)
    # Its speed over the fp32 engine's, measured at export on the exporting
    # CPU (genexport.precision.measure_speedup); null in engines from before.
    speedup: float | None = None


@dataclass
class ClassSpec:
    """One class of a conditional engine."""

    index: int  # its label
    name: str | None  # the data's name for it (a folder's sub-folder), null for bare indices
    log_prior: float  # log p(y): its share of the training images


@dataclass
class Provenance:
    """How a shipped engine was made (genrun/builtin: scripts/builtin_engines.sh)."""

    script: str  # the repository script that ran the commands
    commands: list[str]  # the exact commands, in order
    data: str  # the training data: where it came from, its licence and citation
    results: dict[str, float]  # what was measured: test bits/dim, accuracy, ...


@dataclass
class Manifest:
    family: str
    role: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    data_shape: list[int]
    latent_shapes: list[list[int]]
    pixels: PixelMapping
    temperature: str | None
    checkpoint: CheckpointInfo
    parity: list[Parity]
    export: ExportInfo
    version: int = field(default=MANIFEST_VERSION)
    training_scores: TrainingScores | None = None
    graph_sha256: str | None = None
    classes: list[ClassSpec] | None = None  # a conditional engine's (version 4)
    provenance: Provenance | None = None  # a shipped engine's (version 4)
    precision_plan: PrecisionPlan | None = None  # bf16 engines: which layers, and why

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    @property
    def conditional(self) -> bool:
        """From a class-conditional model (`classes` lists them)."""
        return self.classes is not None

    @property
    def class_names(self) -> list[str] | None:
        """The classes' names by index where the data named them, else None."""
        if not self.classes or any(c.name is None for c in self.classes):
            return None
        return [str(c.name) for c in self.classes]
