"""Configuration dataclasses from YAML, validated field by field.

Every experiment's configuration is a tree of dataclasses. :func:`from_dict` builds it from plain
data (a YAML file plus ``key=value`` overrides) and rejects what it does not understand: an
unknown key, or a value of the wrong type, raises :class:`ConfigError` naming the dotted key.
YAML presets only override the dataclass defaults; the resolved configuration is written next to
every run (:func:`to_dict`, :func:`dump_yaml`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and what is allowed."""


MAX_SEED = 2**63  # seeds feed torch.manual_seed (64-bit) and NumPy's SeedSequence


def _check_common(key: str, name: str, value: Any) -> None:
    """Rules that hold for a field of this name in every config: widths >= 1, ranges ordered."""
    if name == "hidden_sizes" and any(int(h) < 1 for h in value):
        raise ConfigError(f"{key}: every hidden width must be >= 1, got {list(value)}")
    if name.endswith("_range") and isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
        raise ConfigError(f"{key}: expected [low, high] with low <= high, got {list(value)}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected {_describe(tp)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if key.rsplit(".", 1)[-1].endswith("seed") and not 0 <= value < MAX_SEED:
            raise ConfigError(f"{key}: a seed must be an integer in [0, 2**63), got {value}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            # YAML 1.1 (PyYAML) reads 1e-6 as a string; it is a number to any reader of a config.
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list ({_describe(tp)}), got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values ({_describe(tp)}), got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        ktp, vtp = args if args else (Any, Any)
        return {_convert(ktp, k, f"{key}.<key>"): _convert(vtp, v, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"{key}: unsupported annotation {tp!r} in a config dataclass")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "", base: T | None = None) -> T:
    """Build dataclass ``cls`` from ``data``, validating every key and type.

    Keys absent from ``data`` take their values from ``base`` when given, else the class defaults.
    A nested section is laid over its field's default (so a config class may default a section to,
    say, ``InnerConfig(inner_lr=0.4)``, and a YAML file that sets only ``inner.num_inner_steps``
    keeps 0.4).

    Raises:
        ConfigError: an unknown key (with the closest valid one suggested), a value of the wrong
            type, or a value that the dataclass's own ``__post_init__`` rejects.
    """
    data = {} if data is None else data
    where = path or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    prefix = f"{path}." if path else ""
    for k in data:
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(
                f"unknown config key '{prefix}{k}'{hint}; valid keys here: {', '.join(sorted(fields))}"
            )
    kwargs = {}
    for k, v in data.items():
        f = fields[k]
        if dataclasses.is_dataclass(hints[k]) and f.default_factory is not dataclasses.MISSING:
            kwargs[k] = from_dict(hints[k], v, f"{prefix}{k}", base=f.default_factory())
        else:
            kwargs[k] = _convert(hints[k], v, f"{prefix}{k}")
            _check_common(f"{prefix}{k}", k, kwargs[k])
    if base is not None:
        kwargs.update({k: getattr(base, k) for k in fields if k not in kwargs})
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def to_dict(obj: Any) -> Any:
    """A dataclass tree as plain YAML-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps
    the last silently, so a section written twice would lose the first)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"the key {key!r} appears twice in one mapping (lines {seen[key]} and {line}); "
                                  "keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`ConfigError` naming key and lines)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["train.seed=3", "inner.first_order=true"]`` -> ``[(["train", "seed"], 3), ...]``.

    Values are parsed as YAML scalars or flow collections (``[40, 40]``).
    """
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.num_iterations=100)")
        try:
            value = safe_load(raw) if raw.strip() else ""
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from e
        parsed.append((key.strip().split("."), value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of raw config ``data`` with dotted ``key=value`` overrides applied."""
    import copy

    out = copy.deepcopy(data)
    for keys, value in parse_overrides(overrides):
        node = out
        for i, k in enumerate(keys[:-1]):
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = safe_load(path.read_text())
    except ConfigError as e:
        raise ConfigError(f"config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def dump_yaml(obj: Any, path: str | Path, header: str = "") -> None:
    """Write a dataclass tree (or plain data) as YAML, atomically; ``header``: comment lines on top."""
    from rl_maml.checkpoint import atomic_write_bytes

    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)
    atomic_write_bytes(Path(path), (header + text).encode())


# --- Configuration sections shared by several benchmarks -------------------------------------


@dataclasses.dataclass
class InnerConfig:
    """The inner update (adaptation) of a meta-learner."""

    inner_lr: float = 0.01
    """Step size alpha of every inner gradient step (the initial value when learned)."""
    num_inner_steps: int = 1
    """Inner gradient steps taken during meta-training."""
    first_order: bool = False
    """Drop second-order terms of the meta-gradient (first-order MAML)."""
    step_size: Literal["fixed", "learned", "learned_per_element", "learned_per_step"] = "fixed"
    """fixed: alpha (or per_tensor_lr); learned: one step size per tensor optimised by the outer
    loop; learned_per_element: one per parameter entry (Meta-SGD); learned_per_step: one per tensor
    and inner step (MAML++'s LSLR; test-time steps past num_inner_steps use the last)."""
    per_tensor_lr: dict[str, float] = dataclasses.field(default_factory=dict)
    """Fixed step sizes for named parameter tensors (others use inner_lr); fixed step_size only."""
    adapt: list[str] | None = None
    """Parameter names or name prefixes that adapt (e.g. ["layers.4"] for the head only); null
    adapts everything."""
    step_scales: list[float] = dataclasses.field(default_factory=list)
    """Multipliers of inner_lr per inner step during meta-training (steps past the end use the
    last); [] is 1 for every step. [1.0, 0.5] trains on the MAML paper's RL evaluation schedule
    (alpha, then alpha/2). Fixed scalar step_size only."""

    def __post_init__(self) -> None:
        if not (self.inner_lr >= 0 and self.inner_lr < float("inf")):
            raise ConfigError(f"inner.inner_lr must be a finite number >= 0, got {self.inner_lr}")
        if any(not (0 <= float(x) < float("inf")) for x in self.step_scales):
            raise ConfigError(f"inner.step_scales must be finite numbers >= 0, got {self.step_scales}")
        if self.step_scales and (self.step_size != "fixed" or self.per_tensor_lr):
            raise ConfigError("inner.step_scales applies to step_size: fixed without per_tensor_lr only")
        if self.num_inner_steps < 0:
            raise ConfigError(f"inner.num_inner_steps must be >= 0, got {self.num_inner_steps}")
        if self.per_tensor_lr and self.step_size != "fixed":
            raise ConfigError("inner.per_tensor_lr applies to step_size: fixed only")


@dataclasses.dataclass
class TrainConfig:
    """The outer loop of supervised meta-training."""

    num_iterations: int = 20000
    """Meta-iterations (one meta-batch each)."""
    meta_batch_size: int = 25
    """Tasks per meta-batch."""
    outer_lr: float = 1e-3
    """Adam step size of the outer loop."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many iterations (and at the end)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""
    log_every: int = 100
    """Write TensorBoard scalars (averaged over the window) every this many iterations."""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1, or auto (cuda when available)."""
    num_threads: int | None = 1
    """torch intra-op threads; small models run fastest on one; null keeps torch's default."""

    def __post_init__(self) -> None:
        for key in ("num_iterations", "meta_batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, key) < (0 if key == "num_iterations" else 1):
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if not self.outer_lr > 0:
            raise ConfigError(f"train.outer_lr must be > 0, got {self.outer_lr}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1 or null, got {self.num_threads}")


@dataclasses.dataclass
class MAMLPlusPlusConfig:
    """MAML++ training options (Antoniou, Edwards and Storkey 2019, arXiv 1810.09502) for the
    method maml; each is a switch on the same engine. Per-layer per-step inner step sizes (LSLR)
    are inner.step_size=learned_per_step."""

    multi_step_loss: bool = False
    """Score the query set after every inner step (weights from uniform onto the last step over
    msl_anneal_iterations) instead of after the last only."""
    msl_anneal_iterations: int = 5000
    """Meta-iterations over which the multi-step loss weights move onto the last step."""
    first_order_iterations: int = 0
    """Derivative-order annealing: first-order meta-gradients for this many meta-iterations, then
    second order (0: off)."""
    cosine_outer_lr: bool = False
    """Cosine annealing of the outer (Adam) step size from train.outer_lr to min_outer_lr over
    train.num_iterations."""
    min_outer_lr: float = 1e-5
    """The outer step size at the end of the cosine schedule."""

    def __post_init__(self) -> None:
        if self.msl_anneal_iterations < 1 or self.first_order_iterations < 0:
            raise ConfigError("mamlpp.msl_anneal_iterations must be >= 1 and mamlpp.first_order_iterations >= 0")
        if not (0 <= self.min_outer_lr < float("inf")):
            raise ConfigError(f"mamlpp.min_outer_lr must be a finite number >= 0, got {self.min_outer_lr}")

    def enabled(self) -> bool:
        return self.multi_step_loss or self.first_order_iterations > 0 or self.cosine_outer_lr


@dataclasses.dataclass
class VariantConfig:
    """Settings of the MAML variants (the methods ``alpha_maml`` and ``lambda_maml``)."""

    alpha_granularity: Literal["scalar", "layer", "tensor"] = "scalar"
    """Alpha MAML: one inner step size, one per layer, or one per parameter tensor."""
    alpha_hyper_lr: float = 1e-4
    """Alpha MAML: hypergradient step size of alpha (0 freezes alpha)."""
    beta_hyper_lr: float = 0.0
    """Alpha MAML: hypergradient step size of the outer step size beta (0 freezes beta)."""
    outer: Literal["adam", "sgd"] = "adam"
    """Alpha MAML: the outer loop whose step size is beta (= train.outer_lr initially)."""
    pattern: str = "anil"
    """Lambda MAML: 'maml', 'anil', or rows of x/. per layer (input to head), one row per inner step
    separated by '/', e.g. '...xx' or '..xxx/....x'."""

    def __post_init__(self) -> None:
        for key in ("alpha_hyper_lr", "beta_hyper_lr"):
            v = getattr(self, key)
            if not (v >= 0 and v < float("inf")):
                raise ConfigError(f"variant.{key} must be a finite number >= 0, got {v}")


# --- Documentation of the fields -----------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a config dataclass (the string literal under each field), by
    field name; fields without one are absent."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. built interactively)
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def describe_config(obj: Any, prefix: str = "") -> list[str]:
    """The resolved config as ``key: value`` lines, each followed by its docstring as a comment
    (YAML: the output loads back as the same config)."""
    import textwrap

    lines: list[str] = []
    docs = field_docs(type(obj))
    indent = "  " * prefix.count(".")
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        doc = docs.get(f.name)
        if doc:
            lines += [f"{indent}# {line}" for line in textwrap.wrap(doc, 96 - len(indent))]
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:")
            lines += describe_config(value, f"{prefix}{f.name}.")
        else:
            text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10_000).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{indent}{f.name}: {text}")
    return lines
