"""Dataset adapters map a source layout to canonical records.

An adapter yields ``(file, row, record)`` triples whose records use the column
names of :mod:`fusionrank.schema` (or a :class:`RowError` for rows that cannot
even be read). Validation and cleaning happen afterwards, in one place.

Each adapter declares its options as a pydantic model (a subclass of
:class:`AdapterOptions`, set as the adapter's ``Options``); :func:`adapter_options`
validates a plain mapping against it and turns every problem into an
:class:`~fusionrank.errors.AdapterOptionsError` naming the adapter, the bad keys
and the valid ones.
"""
from __future__ import annotations

import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...errors import AdapterOptionsError, FusionrankError, RowError, SchemaError
from ...registry import Registry
from ..readers import iter_records, probe_columns

Record = tuple[str, int, "dict[str, Any] | RowError"]

ADAPTERS: Registry[type["Adapter"]] = Registry("dataset adapter")


class AdapterOptions(BaseModel):
    """Base of every adapter's options model: unknown options are errors."""

    model_config = ConfigDict(extra="forbid")


class LimitedOptions(AdapterOptions):
    """Options of an adapter that can read only the first products (each built-in adapter's)."""

    limit: int | None = Field(None, ge=1, strict=True,
                              description="read at most this many product rows (>= 1; judgments of the others are counted as skipped)")


class Adapter:
    """Base class. Subclasses set ``name`` and ``Options`` and implement the three iterators.

    ``Adapter(root, options)`` takes an ``Options`` instance or a mapping;
    ``Adapter(root, **options)`` works too.
    """

    name: str = ""
    Options: ClassVar[type[AdapterOptions]] = AdapterOptions

    def __init__(self, root: str | Path, options: AdapterOptions | Mapping[str, Any] | None = None, /, **kwargs: Any):
        self.root = Path(root)
        self.options = validate_options(self.name or type(self).__name__, type(self).Options, options, **kwargs)

    def products(self) -> Iterator[Record]:
        raise NotImplementedError

    def queries(self) -> Iterator[Record]:
        return iter(())

    def qrels(self) -> Iterator[Record]:
        return iter(())

    # helpers ---------------------------------------------------------------
    @staticmethod
    def require_columns(path: Path, required: list[str], hint: str = "") -> list[str]:
        """The file's columns; :class:`SchemaError` if a required one is missing.

        A file that cannot be read far enough to tell (empty, not gzip, a damaged
        Parquet footer, ...) passes: reading its rows then reports the fault as a reject.
        """
        cols = probe_columns(path)
        if cols is None:
            return []
        missing = [c for c in required if c not in cols]
        if missing:
            raise SchemaError(str(path), missing, cols, hint)
        return cols

    @staticmethod
    def rows(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        return iter_records(path, fmt)


# options ---------------------------------------------------------------------

def _as_error(name: str, model: type[AdapterOptions], err: ValidationError, given: Mapping[str, Any]) -> AdapterOptionsError:
    valid = list(model.model_fields)
    unknown: list[str] = []
    errors: dict[str, list[dict]] = {}
    for e in err.errors():
        key = str(e["loc"][0]) if e["loc"] else "(options)"
        if e["type"] == "extra_forbidden":
            unknown.append(key)
        else:
            errors.setdefault(key, []).append(e)
    invalid: dict[str, str] = {}
    for key, errs in errors.items():
        e = errs[0]
        if len(errs) > 1 and key in model.model_fields:  # no member of a union fits
            invalid[key] = f"expected {_type_text(model.model_fields[key].annotation)}, got {given.get(key)!r}"
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] != "value_error":
            msg += f", got {e['input']!r}"
        if len(e["loc"]) > 1:  # inside a list or map: say where
            msg = f"at {'.'.join(str(x) for x in e['loc'][1:])}: {msg}"
        invalid[key] = msg
    sugg = {k: m[0] for k in unknown if (m := difflib.get_close_matches(k, valid, n=1, cutoff=0.6))}
    return AdapterOptionsError(name, valid, unknown, invalid, sugg)


def validate_options(name: str, model: type[AdapterOptions], args: AdapterOptions | Mapping[str, Any] | None = None,
                     **extra: Any) -> AdapterOptions:
    """``args`` merged with ``extra`` and validated against ``model``.

    A key given in both with different values is an error; so is any key or value
    the model rejects (an :class:`AdapterOptionsError`, never a pydantic error).
    """
    if isinstance(args, model) and not extra:
        return args
    if isinstance(args, BaseModel):
        args = args.model_dump(exclude_unset=True)
    elif args is not None and not isinstance(args, Mapping):
        raise AdapterOptionsError(name, list(model.model_fields),
                                  invalid={"(options)": f"expected a mapping of option names to values, got {type(args).__name__}"})
    merged = dict(args or {})
    for k, v in extra.items():
        if k in merged and merged[k] != v:
            raise AdapterOptionsError(name, list(model.model_fields),
                                      invalid={k: f"given twice with different values ({merged[k]!r} and {v!r})"})
        merged[k] = v
    try:
        return model.model_validate(merged)
    except ValidationError as e:
        raise _as_error(name, model, e, merged) from None


def options_model(adapter: str) -> type[AdapterOptions]:
    """The options model of the named adapter (an unknown name lists the valid ones)."""
    return ADAPTERS.get(adapter).Options


def adapter_options(adapter: str, args: AdapterOptions | Mapping[str, Any] | None = None, **extra: Any) -> AdapterOptions:
    """Validate ``args`` (plus ``extra`` keys) against the named adapter's options model."""
    return validate_options(adapter, options_model(adapter), args, **extra)


def get_adapter(name: str, root: str | Path, options: AdapterOptions | Mapping[str, Any] | None = None, /,
                **kwargs: Any) -> Adapter:
    return ADAPTERS.get(name)(root, options, **kwargs)


def parse_option_strings(adapter: str, pairs: Iterable[str]) -> dict[str, Any]:
    """``["limit=5", "locale=[\\"us\\",\\"es\\"]"]`` -> ``{"limit": 5, "locale": ["us", "es"]}``.

    Each value is read as JSON when that gives a value the option accepts
    (numbers, ``true``/``false``, ``null``, lists, objects), else kept as text;
    the result still has to pass :func:`adapter_options`.
    """
    model = options_model(adapter)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise FusionrankError(f"--option expects KEY=VALUE, got {pair!r}")
        if key in out:
            raise FusionrankError(f"{adapter} adapter: option {key!r} given twice")
        value: Any = raw
        if key in model.model_fields:
            try:
                decoded = json.loads(raw)
            except ValueError:
                pass
            else:
                try:
                    model.model_validate({key: decoded})
                    value = decoded
                except ValidationError:
                    pass
        out[key] = value
    return out


# documentation ---------------------------------------------------------------

def _type_text(t: Any) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(a) for a in args)
    if origin is typing.Literal:
        return " / ".join(json.dumps(a) for a in args)
    if origin in (list, tuple, set):
        return f"list of {_type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_text(args[0])} to {_type_text(args[1])}" if args else "map"
    if t is type(None):
        return "null"
    if t is Path:
        return "path"
    if isinstance(t, type):
        return {"str": "text", "int": "integer", "bool": "true / false", "float": "number"}.get(t.__name__, t.__name__)
    return str(t)


def describe_options(adapter: str) -> list[dict[str, str]]:
    """One dict per option of the named adapter: ``name``, ``type``, ``default`` and ``help``."""
    model = options_model(adapter)
    rows = []
    for k, f in model.model_fields.items():
        default = f.get_default(call_default_factory=True)
        rows.append({"name": k, "type": _type_text(f.annotation), "default": json.dumps(default, default=str),
                     "help": " ".join((f.description or "").split())})
    return rows


def options_markdown(adapters: Iterable[str] | None = None) -> str:
    """Markdown tables of the options of ``adapters`` (default: every registered one)."""
    out = []
    for name in adapters if adapters is not None else ADAPTERS.names():
        out.append(f"**`{name}`**\n\n| option | type | default | meaning |\n|---|---|---|---|")
        for r in describe_options(name):
            out.append(f"| `{r['name']}` | {r['type']} | `{r['default']}` | {r['help'].replace('|', '&#124;')} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
