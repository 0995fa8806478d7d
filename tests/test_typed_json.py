"""genrun.typed_json, the one reader of dataclasses from JSON (manifest, plan
sidecar, model and train configs): what each annotation accepts, and every
misfit one line naming the file, the field and the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from genrun.backends.sidecar import PLAN_VERSION, PlanInfo, _plan_info
from genrun.errors import UserError
from genrun.typed_json import Malformed, build, parse
from gentrain.models import GlowConfig
from gentrain.train import TrainConfig


@dataclass
class Inner:
    n: int
    x: float = 0.0


@dataclass
class Outer:
    name: str
    shape: tuple[int, int]
    inner: Inner
    sizes: list[int | str]
    table: dict[str, float]
    extra: Any = None
    maybe: Inner | None = None
    tags: list[str] = field(default_factory=list)


GOOD = {"name": "a", "shape": [2, 3], "inner": {"n": 1}, "sizes": ["N", 4], "table": {"k": 1}}


def test_builds_nested_dataclasses_with_tuples_and_int_floats() -> None:
    built = build(Outer, json.loads(json.dumps(GOOD)))
    assert built == Outer("a", (2, 3), Inner(1), ["N", 4], {"k": 1.0})
    assert isinstance(built.table["k"], float) and isinstance(built.shape, tuple)
    assert build(Outer, {**GOOD, "maybe": {"n": 2, "x": 3}}).maybe == Inner(2, 3.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"shape": [2, 3, 4]}, "shape = [2, 3, 4] is not a list of 2 items"),
        ({"shape": [2, True]}, "shape[1] = True is not an int"),
        ({"inner": {"n": 1.5}}, "inner.n = 1.5 is not an int"),
        ({"inner": {"n": 1, "y": 2}}, "inner has unknown keys: y"),
        ({"inner": {}}, "inner lacks n"),
        ({"sizes": [None]}, "sizes[0] = None is not an int or a str"),
        ({"table": {"k": "v"}}, "table.k = 'v' is not a float"),
        ({"table": [1]}, "table = [1] is not an object"),
        ({"maybe": 3}, "maybe = 3 is not an Inner or null"),
        ({"bogus": 1}, "unknown keys: bogus"),
        ({"name": None}, "name = None is not a str"),
    ],
)
def test_each_misfit_names_its_field(change, message) -> None:
    with pytest.raises(Malformed) as err:
        build(Outer, {**GOOD, **change})
    assert str(err.value) == message


def test_parse_is_one_line_with_the_file_and_the_fix() -> None:
    with pytest.raises(UserError) as err:
        parse(Outer, {k: v for k, v in GOOD.items() if k != "inner"}, "x.json", "fix it")
    assert str(err.value) == "x.json: lacks inner; fix it"


def test_ranges_bound_top_level_fields_and_their_items() -> None:
    ranges = {"shape": (1, 2), "inner": (0, 0)}
    with pytest.raises(Malformed, match=r"shape = \(2, 3\) is outside 1..2"):
        build(Outer, GOOD, ranges=ranges)


def test_configs_read_through_it() -> None:
    with pytest.raises(UserError, match=r"^Glow config: lu = 1 is not a bool; "):
        GlowConfig.from_dict({"data_shape": (1, 8, 8), "lu": 1})
    with pytest.raises(UserError, match=r"^Glow config: lacks data_shape; "):
        GlowConfig.from_dict({})
    assert GlowConfig.from_dict({"data_shape": [1, 8, 8]}).data_shape == (1, 8, 8)
    with pytest.raises(UserError, match=r"train config: lr = 'fast' is not a float"):
        TrainConfig.from_dict({"lr": "fast", "gone_option": 1})  # unknown keys: dropped


def test_plan_info_reads_through_it(tmp_path) -> None:
    info = {
        "tensorrt": "10.13.3.9", "gpu": "H100", "compute_capability": "9.0",
        "hardware_compat": "none", "profile": {"min": 1, "opt": 256, "max": 4096},
        "precision": "fp32", "plan_sha256": "0" * 64, "onnx_file": "g.onnx",
        "onnx_sha256": "0" * 64, "workspace_gib": 4, "version": PLAN_VERSION,
    }  # fmt: skip
    path = tmp_path / "g.plan.json"
    assert _plan_info(info, path) == PlanInfo(**{**info, "workspace_gib": 4.0})
    for change, message in [
        ({"profile": {"min": 1, "opt": "x", "max": 2}}, "profile.opt = 'x' is not an int"),
        ({"profile": {"min": 1}}, "profile = {'min': 1} is not {min, opt, max}"),
        ({"compute_capability": "nine"}, "compute_capability = 'nine' is not major.minor"),
        ({"gpu": 7}, "gpu = 7 is not a str"),
    ]:
        with pytest.raises(UserError) as err:
            _plan_info({**info, **change}, path)
        assert str(err.value) == f"{path} holds malformed plan info: {message}; rebuild the plan"
