"""Seeded mutations of params.yaml, each of which must be rejected: `mutation(seed) -> Mutation` with the file's
new text and the words the error must contain (the field, or "line N" for YAML syntax errors).

The schema (opensora_core.config's pydantic models) drives the field-level kinds, so a field added to the schema
is fuzzed without touching this file. Every mutation lands where it is validated: the top level, the `tiny` preset
(the one loaded) or the top-level sections that override it.
"""

from __future__ import annotations

import copy
import math
import random
import types
import typing
from dataclasses import dataclass

import annotated_types as at
import yaml
from pydantic import BaseModel

from opensora_core.config import (Config, DataConfig, EvalConfig, ModelConfig, StageConfig, SyntheticVocabConfig,
                                  TextEncoderConfig, TrackingConfig, TrainConfig, VAEConfig)

PRESET = "tiny"
SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelConfig, "vae": VAEConfig, "text_encoder": TextEncoderConfig, "data": DataConfig,
    "data.synthetic": SyntheticVocabConfig, "train": TrainConfig, "eval": EvalConfig, "tracking": TrackingConfig,
}
KINDS = ("unknown_key", "wrong_type", "out_of_range", "impossible", "yaml_syntax", "deleted")


@dataclass
class Mutation:
    kind: str
    description: str
    text: str
    expect: list[str]  # each must appear in the error message


def _fields(base: dict) -> list[tuple[str, str, typing.Any]]:
    """(section path, field name, FieldInfo) for every field validated for the tiny preset."""
    out = [("", name, Config.model_fields[name]) for name in ("preset", "seed", "run_dir")]
    for section, model in SECTIONS.items():
        out += [(section, name, info) for name, info in model.model_fields.items()]
    for stage in base["presets"][PRESET]["stages"]:
        out += [(f"stages.{stage}", name, info) for name, info in StageConfig.model_fields.items()]
    return out


def _node(tree: dict, section: str, top_level: bool) -> dict:
    """The mapping where `section`'s keys live: inside the preset, or in the overriding top-level sections."""
    node = tree if top_level else tree["presets"][PRESET]
    for part in filter(None, section.split(".")):
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    return node


def _dotted(section: str, name: str) -> str:
    return f"{section}.{name}" if section else name


def _base_type(annotation) -> type:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # X | None: the X
        return _base_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    return typing.get_origin(annotation) or annotation


def _dump(tree: dict) -> str:
    return yaml.dump(tree, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)


def _unknown_key(rng: random.Random, base: dict, text: str) -> Mutation:
    tree = copy.deepcopy(base)
    places = [""] + list(SECTIONS) + [f"stages.{s}" for s in base["presets"][PRESET]["stages"]]
    section = rng.choice(places)
    key = f"{rng.choice(['lr_typo', 'colour', 'bacth_size', 'extra', 'nmae', 'steps'])}_{rng.randrange(1000)}"
    top_level = section == "" or rng.random() < 0.3
    _node(tree, section, top_level)[key] = rng.choice([1, "x", None, [1], {"a": 1}]) if section else 1
    where = "top level" if top_level else f"presets.{PRESET}"
    return Mutation("unknown_key", f"{_dotted(section, key)} added at the {where}", _dump(tree),
                    [_dotted(section, key), "unknown key"])


def _wrong_type(rng: random.Random, base: dict, text: str) -> Mutation:
    tree = copy.deepcopy(base)
    section, name, info = rng.choice(_fields(base))
    kind = _base_type(info.annotation)
    if kind in (int, float, bool):
        bad = rng.choice(["abc", {"x": 1}, [[1]], "1e-3e"])
    elif kind in (list, tuple):
        bad = rng.choice([5, "abc", {"x": 1}])
    else:  # str, Literal
        bad = rng.choice([5, 2.5, {"x": 1}, [[1]]])
    if name == "run_dir":
        tree["presets"][PRESET]["run_dir"] = bad
    elif section == "":
        tree[name] = bad  # preset, seed
    else:
        _node(tree, section, section in SECTIONS and rng.random() < 0.3)[name] = bad
    return Mutation("wrong_type", f"{_dotted(section, name)} = {bad!r}", _dump(tree), [_dotted(section, name)])


def _violations(info, kind: type, rng: random.Random) -> list:
    bad = []
    for c in info.metadata:
        step = rng.choice([1, 2, 10]) if kind is int else rng.choice([0.5, 1.0, 1e-6 + 0.25])
        if isinstance(c, at.Gt):
            bad += [c.gt, c.gt - step]
        elif isinstance(c, at.Ge):
            bad.append(c.ge - step)
        elif isinstance(c, at.Lt):
            bad += [c.lt, c.lt + step]
        elif isinstance(c, at.Le):
            bad.append(c.le + step)
    if kind is float:
        bad += [math.nan, math.inf, -math.inf]
    return bad


def _out_of_range(rng: random.Random, base: dict, text: str) -> Mutation:
    tree = copy.deepcopy(base)
    candidates = []
    for section, name, info in _fields(base):
        kind = _base_type(info.annotation)
        if kind in (int, float) and info.metadata:
            candidates.append((section, name, info, kind))
    section, name, info, kind = rng.choice(candidates)
    bad = rng.choice(_violations(info, kind, rng))
    if section == "":
        tree[name] = bad
    else:
        _node(tree, section, section in SECTIONS and rng.random() < 0.3)[name] = bad
    return Mutation("out_of_range", f"{_dotted(section, name)} = {bad!r}", _dump(tree), [_dotted(section, name)])


def _impossible(rng: random.Random, base: dict, text: str) -> Mutation:
    """Values fine alone, impossible together (the model validators)."""
    tree = copy.deepcopy(base)
    p = tree["presets"][PRESET]
    stage = rng.choice(list(p["stages"]))
    st = p["stages"][stage]
    latent_frames = st["num_frames"] // p["model"]["patch_size"][0]
    options = [
        (lambda: p["model"].update(hidden_size=p["model"]["num_heads"] * rng.randrange(8, 40) + rng.randrange(1, p["model"]["num_heads"])),
         "hidden_size", "not divisible by num_heads"),
        (lambda: st.update(image_size=st["image_size"] + rng.randrange(1, p["vae"]["downsample"])),
         f"stages.{stage}.image_size", "not divisible by vae.downsample"),
        (lambda: p["model"].update(patch_size=[1, 3, 3]), "image_size", "not divisible by patch"),
        (lambda: p["model"].update(patch_size=[3, 2, 2]), "num_frames", "not divisible by patch_size[0]"),
        (lambda: st.update(sp_size=latent_frames + rng.randrange(1, 4)), f"stages.{stage}.sp_size", "does not divide"),
        (lambda: (st.update(sp_size=2), p["train"].update(processes=rng.choice([1, 3, 5])),
                  tree["train"].update(processes=None)), f"stages.{stage}.sp_size", "train.processes"),
        (lambda: st.update(frame_interval=rng.randrange(20, 60)), f"stages.{stage}", "data.video_frames"),
        (lambda: p["data"].update(min_duration=p["data"]["max_duration"] + rng.randrange(1, 100)), "min_duration", "max_duration"),
        (lambda: p["data"].update(source="ingest", src=None), "data", "ingest needs src"),
        (lambda: p["data"].update(num_videos=0), "data", "synthetic data needs"),
        (lambda: p["data"]["synthetic"].update(colors=[rng.choice(["mauve", "teal", "RED", "redd"])]), "data.synthetic", "colors"),
    ]
    apply, field, words = rng.choice(options)
    apply()
    return Mutation("impossible", f"{field}: {words}", _dump(tree), [field, words])


def _yaml_syntax(rng: random.Random, base: dict, text: str) -> Mutation:
    lines = text.splitlines()
    value_lines = [i for i, ln in enumerate(lines) if ": " in ln and not ln.lstrip().startswith("#") and "{" not in ln]
    i = rng.choice(value_lines)
    indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
    choice = rng.randrange(5)
    line = f"line {i + 1}, "  # where the parser must point (1-based)
    if choice == 0:
        lines.insert(i, f"\t{indent}tabbed: 1")
        what = "a tab as indentation"
    elif choice == 1:
        key = lines[i].split(":")[0]
        lines[i] = f"{key}: [unclosed, list"
        what, line = "an unclosed [ list", "line "  # found where the list should have closed
    elif choice == 2:
        lines[i] = lines[i].split(" #")[0] + ": extra: colon"
        what = "a second ': ' on a line"
    elif choice == 3:
        lines.insert(i + 1, f"{indent}- stray list item")
        what, line = "a list item inside a mapping", f"line {i + 2}, "
    else:
        key = lines[i].split(":")[0]
        lines[i] = f"{key}: *no_such_anchor"
        what = "an undefined alias"
    return Mutation("yaml_syntax", f"{what} at line {i + 1}", "\n".join(lines) + "\n", ["not valid YAML", line])


def _deleted(rng: random.Random, base: dict, text: str) -> Mutation:
    tree = copy.deepcopy(base)
    p = tree["presets"][PRESET]
    required = [("", s) for s in ("model", "vae", "text_encoder", "data", "train", "stages", "eval", "tracking", "run_dir")]
    for section, model in list(SECTIONS.items()) + [(f"stages.{s}", StageConfig) for s in p["stages"]]:
        required += [(section, n) for n, f in model.model_fields.items() if f.is_required() and section != "data.synthetic"]
    required += [("presets", "")]
    section, name = rng.choice(required)
    if section == "presets":
        del tree["presets"]
        return Mutation("deleted", "the presets section", _dump(tree), ["preset"])
    if section == "" and name == "train":
        tree.pop("train")  # else the top-level `train:` nulls stand in for it
    if section == "" and name in ("model", "text_encoder", "data", "stages", "run_dir") and rng.random() < 0.3:
        p[name] = {} if name != "run_dir" else None  # the other sections are complete with their defaults
        how = "emptied"
    else:
        _node(tree, section, False).pop(name)
        how = "deleted"
    return Mutation("deleted", f"{_dotted(section, name)} {how}", _dump(tree), [_dotted(section, name)])


_MAKERS = {"unknown_key": _unknown_key, "wrong_type": _wrong_type, "out_of_range": _out_of_range,
           "impossible": _impossible, "yaml_syntax": _yaml_syntax, "deleted": _deleted}


def mutation(seed: int, base: dict, text: str) -> Mutation:
    """Mutation number `seed` (kinds in turn, details drawn from Random(seed)) of a params tree and its text."""
    kind = KINDS[seed % len(KINDS)]
    return _MAKERS[kind](random.Random(seed), base, text)
