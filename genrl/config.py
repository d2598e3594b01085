"""Typed configs: dataclass schemas merged with YAML files and ``key=value`` overrides.

A schema is a dataclass tree; YAML (a file may ``inherit: base.yaml`` and
override parts of it) and command-line overrides are merged onto it
with OmegaConf in struct mode, so an unknown key, a wrong type or a missing
file is a :class:`ConfigError` with one line naming the key and what is valid.

Value constraints sit next to the fields they constrain (``lr: float = check(1e-4, ">0")``)
and are checked once, after every load, for every command.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from .errors import UsageError

T = TypeVar("T")

__all__ = ["ConfigError", "check", "load_config", "save_config", "to_yaml", "MISSING"]


class ConfigError(UsageError):
    """A config file or override that does not fit its schema."""


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build ``schema`` from defaults, then ``path`` (YAML), then ``key=value`` overrides.

    Returns a plain dataclass instance (not an OmegaConf proxy).
    """
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    _open_dicts(base, schema)
    layers: list[tuple[str, Any]] = []
    if path is not None:
        layers += _file_layers(Path(path))
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value (e.g. optim.lr=1e-4)")
    if overrides:
        for o in overrides:  # name the one override that does not parse
            try:
                OmegaConf.from_dotlist([o])
            except Exception as e:  # noqa: BLE001 - OmegaConf and yaml raise many types
                raise ConfigError(f"cannot parse override {o!r}: {_first_line(e)}; quote a plain string value, "
                                  f"e.g. key='value'") from None
        try:
            layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
        except Exception as e:  # noqa: BLE001 - e.g. optim=[] and optim.lr=1 together
            raise ConfigError(f"overrides {' '.join(overrides)!r} contradict each other: {_first_line(e)}") from None
    merged = base
    for source, layer in layers:
        merged = _merge(merged, layer, source, schema)
    unset = _unset_env_keys(merged)
    if unset:
        (key, name), rest = unset[0], unset[1:]
        more = "; also " + ", ".join(f"{n} (for '{k}')" for k, n in rest) if rest else ""
        them, keys = ("them", "keys") if rest else ("it", "key")
        raise ConfigError(f"config key '{key}' reads the environment variable {name}, which is not set{more}: export "
                          f"{them} (e.g. export {name}=/path), or give the {keys} on the command line ({key}=VALUE)")
    try:
        obj = OmegaConf.to_object(merged)
    except MissingMandatoryValue as e:
        raise ConfigError(f"config key '{e.full_key}' is required but not set") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config: {_first_line(e)}") from None
    validate(obj)
    return obj  # type: ignore[return-value]


ENV_VAR = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)\}")
"""A ``${oc.env:NAME}`` value without a default (one with a default never needs the variable)."""


def _unset_env_keys(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, variable) of every ``${oc.env:NAME}`` value (without a default) whose variable is unset."""
    import os

    out = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else []
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, DictConfig):
            out += _unset_env_keys(v, f"{key}.")
        elif isinstance(v, str):
            out += [(key, m.group(1)) for m in ENV_VAR.finditer(v) if m.group(1) not in os.environ]
    return out


# ------------------------------------------------------------------------ value constraints
def check(default: Any = MISSING, rule: str = "", *, factory: typing.Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose value must satisfy ``rule``, checked after every load.

    Rules: ``>0``, ``>=0``, ``>=1`` (any ``<op><number>``), intervals ``[0, 1]`` / ``(0, 1000]``,
    ``nonempty``, ``one of: a, b``; ``each <rule>`` applies to every element of a list, and rules
    combine with `` and ``. Non-finite numbers never pass a numeric rule.
    """
    meta = {"check": rule}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


_CMP = re.compile(r"^(>=|<=|>|<)\s*(-?[\d.e+-]+)$")
_INTERVAL = re.compile(r"^([\[(])\s*(-?[\d.e+-]+|-inf)\s*,\s*(-?[\d.e+-]+|inf)\s*([\])])$")


def _ok(value: Any, rule: str) -> bool:
    rule = rule.strip()
    if " and " in rule:
        return all(_ok(value, r) for r in rule.split(" and "))
    if rule.startswith("each "):
        return all(_ok(v, rule[5:]) for v in (value or []))
    if rule == "nonempty":
        return bool(value)
    if rule.startswith("one of:"):
        return str(value) in [c.strip() for c in rule[len("one of:"):].split(",")]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if m := _CMP.match(rule):
        op, bound = m.group(1), float(m.group(2))
        return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]
    if m := _INTERVAL.match(rule):
        lo, hi = float(m.group(2)), float(m.group(3))
        return (value >= lo if m.group(1) == "[" else value > lo) and (value <= hi if m.group(4) == "]" else value < hi)
    raise ValueError(f"unknown config rule {rule!r}")


def _describe(rule: str) -> str:
    words = {">0": "a number > 0", ">=0": "a number >= 0", ">=1": "an integer >= 1", ">=2": "an integer >= 2",
             "nonempty": "a non-empty list"}
    parts = []
    for r in rule.split(" and "):
        r = r.strip()
        each = r.startswith("each ")
        r = r[5:] if each else r
        d = words.get(r) or (r.replace("one of:", "one of") if r.startswith("one of:") else f"a number in {r}"
                             if _INTERVAL.match(r) else f"a number {r}")
        parts.append(f"every element {d}" if each else d)
    return " and ".join(parts)


def validate(obj: Any, prefix: str = "") -> None:
    """Check every ``check()`` rule in a loaded config tree; the first violation is a ConfigError."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        rule = f.metadata.get("check")
        if rule and not _ok(value, rule):
            raise ConfigError(f"config key '{prefix}{f.name}' is {value!r}; valid: {_describe(rule)}")
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}{f.name}.")
        elif isinstance(value, dict):
            for k, v in value.items():
                validate(v, f"{prefix}{f.name}.{k}.")


def _open_dicts(node: DictConfig, schema: type) -> None:
    """Let ``dict[str, ...]`` fields take keys of the user's choosing (struct mode stays on elsewhere)."""
    for name, t in _hints(schema).items():
        if typing.get_origin(t) is dict:
            OmegaConf.set_struct(node[name], False)
        elif isinstance(t, type) and dataclasses.is_dataclass(t):
            _open_dicts(node[name], t)


INHERIT = "inherit"


def _file_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """A YAML file and, first, the files it inherits from (``inherit: other.yaml``, relative to it)."""
    cfg = _read_yaml(path)
    parent = cfg.pop(INHERIT, None)
    if parent is None:
        return [(str(path), cfg)]
    base = (path.parent / str(parent)).resolve()
    if base in seen:
        raise ConfigError(f"config file {path} inherits from itself through {base}")
    return _file_layers(base, (*seen, path.resolve())) + [(str(path), cfg)]


def _read_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, expected a .yaml file")
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml raises many types
        raise ConfigError(f"config file {path} is not valid YAML: {_first_line(e)}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not a {type(cfg).__name__}")
    return cfg


def _merge(base: DictConfig, layer: DictConfig, source: str, schema: type) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except ConfigKeyError as e:
        key = e.full_key or str(e.key)
        raise ConfigError(f"{source}: unknown config key '{key}'; valid here: {_valid_keys(schema, key)}") from None
    except ValidationError as e:
        if not e.full_key:  # a plain value where a group of settings belongs (e.g. optim=0)
            raise _shape_error(base, layer, source, schema) from None
        want = _field_type(schema, e.full_key)
        raise ConfigError(f"{source}: config key '{e.full_key}' got {e.value!r}, expected {want}") from None
    except (TypeError, ValueError):  # a mapping where a list belongs, or the other way round
        raise _shape_error(base, layer, source, schema) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {_first_line(e)}") from None


def _kind(node: Any) -> str:
    return "a group of settings" if OmegaConf.is_dict(node) else "a list" if OmegaConf.is_list(node) else "a value"


def _shape_error(base: DictConfig, layer: DictConfig, source: str, schema: type, prefix: str = "") -> ConfigError:
    """The first key whose value is a mapping, a list or a scalar where the schema has another of these."""
    for k, v in layer.items():
        if str(k) not in base:
            continue
        want, got = base[str(k)], v
        if _kind(want) != _kind(got) and want is not None:
            extra = f" (valid keys: {_valid_keys(schema, f'{prefix}{k}.x')})" if OmegaConf.is_dict(want) else ""
            return ConfigError(f"{source}: config key '{prefix}{k}' must be {_kind(want)}, got {_kind(got)}{extra}")
        if OmegaConf.is_dict(want) and OmegaConf.is_dict(got):
            inner = _shape_error(want, got, source, schema, f"{prefix}{k}.")
            if "could not merge" not in str(inner):
                return inner
    return ConfigError(f"{source}: could not merge its values into the schema (a value of the wrong kind)")


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to raw ones
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _walk(schema: type, dotted: str) -> tuple[type | None, str]:
    """Follow ``a.b.c`` through nested dataclasses: (dataclass holding the last key, last key)."""
    parts = dotted.split(".")
    cls: type | None = schema
    for p in parts[:-1]:
        t = _hints(cls).get(p) if cls is not None and dataclasses.is_dataclass(cls) else None
        cls = t if isinstance(t, type) and dataclasses.is_dataclass(t) else None
    return cls, parts[-1]


def _valid_keys(schema: type, dotted: str) -> str:
    cls, _ = _walk(schema, dotted)
    if cls is None:
        return "(none)"
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _field_type(schema: type, dotted: str) -> str:
    cls, key = _walk(schema, dotted)
    t = _hints(cls).get(key) if cls is not None else None
    if t is None:
        return "a value of the schema's type"
    return getattr(t, "__name__", str(t).replace("typing.", ""))


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def to_yaml(cfg: Any, comments: bool = False) -> str:
    """YAML text of a dataclass config; with ``comments``, each key is preceded by its field's docstring
    and the values its rule allows (what ``--print-config`` shows). Either text loads back the same config."""
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
    return _comment(text, type(cfg)) if comments else text


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass (and its dataclass bases): the string literal written under
    each field, as the schemas document their keys. Fields without one, or classes without source, are absent."""
    import ast
    import inspect
    import textwrap

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        except (OSError, TypeError, SyntaxError, IndexError):
            continue
        for a, b in zip(body, body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                out[a.target.id] = " ".join(inspect.cleandoc(b.value.value).split())
    return out


def _comment(text: str, schema: type, width: int = 100) -> str:
    """Put ``# docstring (valid: rule)`` above every key of OmegaConf's YAML whose field is documented."""
    import textwrap

    docs: dict[type, dict[str, str]] = {}
    out: list[str] = []
    path: list[tuple[int, str]] = []  # (indent, key) of the keys enclosing this line
    block = None  # indent of a block scalar's key: deeper lines are its text
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if block is not None and indent > block:
            out.append(line)
            continue
        block = None
        m = re.match(r"^( *)([A-Za-z_][\w-]*):(?: (.*))?$", line)
        if not m:
            out.append(line)
            continue
        while path and path[-1][0] >= indent:
            path.pop()
        key = m.group(2)
        if (m.group(3) or "").strip() in ("|", "|-", "|+", ">", ">-", ">+"):
            block = indent
        cls, _ = _walk(schema, ".".join([k for _, k in path] + [key]))
        path.append((indent, key))
        field = next((f for f in dataclasses.fields(cls) if f.name == key), None) if cls is not None else None
        if field is None:
            out.append(line)
            continue
        doc = docs.setdefault(cls, field_docs(cls)).get(key, "")
        rule = field.metadata.get("check")
        doc = f"{doc} (valid: {_describe(rule)})".strip() if rule else doc
        if doc:
            if indent == 0 and out:
                out.append("")
            out += textwrap.wrap(doc, width, initial_indent=" " * indent + "# ", subsequent_indent=" " * indent + "# ")
        out.append(line)
    return "\n".join(out) + "\n"


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config next to a run's outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path
