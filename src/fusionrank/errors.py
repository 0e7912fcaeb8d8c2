"""Exceptions raised by fusionrank.

Every error carries the data a user needs to fix the problem as attributes,
so callers and tests can inspect them instead of parsing messages.
"""
from __future__ import annotations


class FusionrankError(Exception):
    """Base class of every error fusionrank raises on purpose."""


class UnknownNameError(FusionrankError, KeyError):
    """A registry lookup used a name that is not registered.

    Attributes: ``kind`` (e.g. "encoder"), ``name`` (what was asked for) and
    ``valid`` (sorted registered names, generated from the registry itself).
    """

    def __init__(self, kind: str, name: str, valid: list[str]):
        self.kind, self.name, self.valid = kind, name, list(valid)
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(self.valid) or '(none registered)'}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class RowError(FusionrankError):
    """One input row failed validation.

    Attributes: ``file``, ``row`` (0-based data row, header excluded), ``field``
    and ``reason``.
    """

    def __init__(self, file: str, row: int | None, field: str | None, reason: str):
        self.file, self.row, self.field, self.reason = str(file), row, field, reason
        where = f"{self.file}"
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {reason}")

    def as_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "field": self.field, "reason": self.reason}


class SchemaError(FusionrankError):
    """A whole file does not fit the expected schema (e.g. required columns missing).

    Attributes: ``file``, ``missing`` (required columns not found) and ``found``.
    """

    def __init__(self, file: str, missing: list[str], found: list[str], hint: str = ""):
        self.file, self.missing, self.found = str(file), list(missing), list(found)
        msg = f"{self.file}: missing required column(s) {self.missing}; found {self.found}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class NotFittedError(FusionrankError, ValueError):
    """An estimator or encoder was used before ``fit`` (or ``load``)."""

    def __init__(self, obj: object, what: str = "fit"):
        name = type(obj).__name__
        super().__init__(f"This {name} instance is not fitted yet. Call '{what}' with appropriate data before using it, or load a saved one.")


class MissingExtraError(FusionrankError, ImportError):
    """An optional dependency is not installed; names the extra to install."""

    def __init__(self, package: str, extra: str):
        self.package, self.extra = package, extra
        super().__init__(f"{package} is required for this feature; install it with: pip install 'fusionrank[{extra}]'")


class UnknownCategory(FusionrankError, KeyError):
    """A category filter that names no category of the catalogue (the message lists the valid ones)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class AdapterOptionsError(FusionrankError, ValueError):
    """Options given to a dataset adapter do not fit its options model.

    Attributes: ``adapter`` (its name), ``unknown`` (option names it does not
    have), ``invalid`` (option name -> reason, for known options with a bad value)
    and ``valid`` (every option name it accepts, generated from its model).
    """

    def __init__(self, adapter: str, valid: list[str], unknown: list[str] | None = None,
                 invalid: dict[str, str] | None = None, suggestions: dict[str, str] | None = None):
        self.adapter, self.valid = adapter, list(valid)
        self.unknown, self.invalid = list(unknown or ()), dict(invalid or {})
        parts = []
        for k in self.unknown:
            hint = f" (did you mean {suggestions[k]!r}?)" if suggestions and k in suggestions else ""
            parts.append(f"unknown option {k!r}{hint}")
        parts += [f"option {k!r}: {why}" for k, why in self.invalid.items()]
        super().__init__(f"{adapter} adapter: {'; '.join(parts)}; valid options: {', '.join(self.valid) or '(none)'}")


class StaleArtefactError(FusionrankError):
    """A prepared artefact (an embedding store, an index) does not match what it is used with.

    Attributes: ``problems`` (one line per missing or stale part), ``command`` (the
    command that prepares it) and ``store`` (the artefact's path), when known.
    """

    def __init__(self, message: str, problems: list[str] | None = None, command: str | None = None,
                 store: str | None = None):
        self.problems, self.command, self.store = list(problems or []), command, store
        super().__init__(message)
