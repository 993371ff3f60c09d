"""Settings declared once: an `Option` on each field of a config dataclass (help, choices, limits, where the app
shows it), from which validation, command-line flags and the app's control bounds are derived.

    @dataclass(frozen=True)
    class Config:
        steps: int = option(20, "denoising steps", lo=1, hi=1000)

        def __post_init__(self):
            check_fields(self)  # every field against its declaration

`add_arguments(parser, Config)` adds one flag per field (`--steps`, `--no-reuse` for booleans, argparse
choices, number types that check the limits while parsing); `from_args(Config, namespace)` builds the
config back; `Option.ui_bounds()` gives a slider's closed range. No argparse parser and no Gradio in here.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any

APP_PLACES = ("main", "advanced")  # where the app shows an option: its main controls, or the "Advanced" accordion


@dataclass(frozen=True)
class Option:
    """One field's declaration. `name`, `type`, `optional` and `default` are filled in by `options_of`."""

    help: str
    choices: tuple = ()
    lo: float | None = None  # lower limit (None: none)
    hi: float | None = None
    lo_open: bool = False  # the limit itself is refused
    hi_open: bool = False
    label: str = ""  # its name on the app's page and in the app's messages (default: the field name)
    app: str | None = "advanced"  # one of APP_PLACES, or None: not in the app
    when: tuple[str, Any] | None = None  # (field, value): only used when that field has that value
    ui_step: float | None = None  # a slider's resolution (integers: 1)
    name: str = ""
    type: type = object  # int, float, bool or str
    optional: bool = False  # None is allowed
    default: Any = None

    def __post_init__(self):
        if self.app is not None and self.app not in APP_PLACES:
            raise ValueError(f"app must be one of {APP_PLACES} or None, got {self.app!r}")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def numeric(self) -> bool:
        return self.type in (int, float)

    def range_text(self) -> str:
        """'an integer in 1..100', 'a finite number > 0.0 and <= 1.0', 'a finite number >= 0.0', ..."""
        if self.type is int and self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
            return f"an integer in {self.lo}..{self.hi}"
        kind = "an integer" if self.type is int else "a finite number"
        parts = ([f"{'>' if self.lo_open else '>='} {self.lo}"] if self.lo is not None else []) + \
                ([f"{'<' if self.hi_open else '<='} {self.hi}"] if self.hi is not None else [])
        return " ".join([kind, " and ".join(parts)]).strip()

    def problem(self, value) -> str | None:
        """What is wrong with `value` for this option, as the end of a sentence ('must be ...'), or None."""
        if value is None:
            return None if self.optional else f"must be {self._expected()}, got None"
        if self.type is bool:
            return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
        if self.choices:
            return None if isinstance(value, str) and value in self.choices else \
                f"must be one of {', '.join(map(str, self.choices))}; got {value!r}"
        if self.type is str:
            return None if isinstance(value, str) else f"must be a string, got {value!r}"
        wanted = numbers.Integral if self.type is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted) or not math.isfinite(value):
            return f"must be {self.range_text()}, got {value!r}"
        low_ok = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        high_ok = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return None if low_ok and high_ok else f"must be {self.range_text()}, got {value!r}"

    def _expected(self) -> str:
        if self.type is bool:
            return "true or false"
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        return self.range_text() if self.numeric else "a string"

    def check(self, value, name: str | None = None):
        """`value` if it fits, else ValueError '<name> must be ...' (name: the field's unless given)."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(f"{name or self.name} {problem}")
        return value

    def parse(self, text: str):
        """argparse type: the flag's text as a number within the limits (ArgumentTypeError otherwise)."""
        value = self.type(text)  # a ValueError reads "invalid int value: 'x'", as for type=int
        if self.problem(value) is not None:  # a float is quoted as typed ('1e400', not inf)
            raise argparse.ArgumentTypeError(f"must be {self.range_text()}, got "
                                             f"{value if self.type is int else repr(text)}")
        return value

    def argparse_type(self):
        """`parse` named after the plain type, since argparse says 'invalid <type.__name__> value'."""
        def typed(text: str):
            return self.parse(text)

        typed.__name__ = self.type.__name__
        return typed

    def ui_bounds(self, step: float | None = None) -> tuple[float, float | None]:
        """A slider's closed (lo, hi): an open limit moves in by one step (`step`, else `ui_step`, else 1)."""
        step = step or self.ui_step or 1
        if self.lo is None:
            raise ValueError(f"{self.name} declares no lower limit: a slider needs one")
        lo = self.lo + step if self.lo_open else self.lo
        hi = None if self.hi is None else self.hi - step if self.hi_open else self.hi
        return lo, hi


def option(default, help: str, **declaration) -> Any:
    """A dataclass field with its `Option` (see `Option` for the keywords) in the field's metadata."""
    return dataclasses.field(default=default, metadata={"option": Option(help, **declaration)})


def _base_type(hint) -> tuple[type, bool]:
    """(int | float | bool | str, whether None is allowed) of a field's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        base = [a for a in args if a is not type(None)]
        if len(base) != 1:
            raise TypeError(f"an option's type must be one type or one type | None, got {hint}")
        return base[0], True
    return hint, False


@functools.cache
def options_of(cls) -> dict[str, Option]:
    """Every declared field of dataclass `cls` by name, completed with its name, type and default."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "option" not in f.metadata:
            continue
        kind, optional = _base_type(hints[f.name])
        if kind not in (int, float, bool, str):
            raise TypeError(f"{cls.__name__}.{f.name}: an option is an int, float, bool or str, got {kind}")
        out[f.name] = dataclasses.replace(f.metadata["option"], name=f.name, type=kind, optional=optional,
                                          default=f.default)
    return out


def check_fields(obj) -> None:
    """Check every declared field of dataclass instance `obj`; ValueError '<Class>.<field> must be ...'."""
    for name, opt in options_of(type(obj)).items():
        opt.check(getattr(obj, name), f"{type(obj).__name__}.{name}")


def add_arguments(parser, cls, *, title: str | None = None):
    """One flag per declared field of `cls` (in declaration order), its default the field's default; returns
    the argument group (`title`) or the parser the flags went to.

    Booleans get --x / --no-x; choices become argparse choices; numbers a type that checks the limits.
    """
    group = parser.add_argument_group(title) if title else parser
    for opt in options_of(cls).values():
        kw: dict[str, Any] = dict(default=opt.default, help=opt.help, dest=opt.name)
        if opt.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif opt.choices:
            kw["choices"] = opt.choices
        elif opt.numeric:
            kw["type"] = opt.argparse_type()
            kw["help"] = f"{opt.help}; {opt.range_text()}"
        if opt.when is not None:
            field, value = opt.when
            flag = options_of(cls)[field].flag
            kw["help"] += f" [only without {flag}]" if value is None else f" [only with {flag} {value}]"
        group.add_argument(opt.flag, **kw)
    return group


def from_args(cls, namespace: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
    """An instance of `cls` from the flags `add_arguments` added.

    A flag set away from its default while its `when` condition does not hold is refused (`--iterations`
    with `--budget`, `--damping` with `--solver anderson`). Problems raise ValueError, or with `parser`
    end in `parser.error` (one line, exit code 2).
    """
    opts = options_of(cls)
    values = {name: getattr(namespace, name) for name in opts}
    try:
        for opt in opts.values():
            if opt.when is None or values[opt.name] == opt.default:
                continue
            other, wanted = opts[opt.when[0]], opt.when[1]
            if values[other.name] != wanted:
                raise ValueError(f"{opt.flag} cannot be combined with {other.flag}" if wanted is None else
                                 f"{opt.flag} is only used with {other.flag} {wanted}, not {values[other.name]}")
        return cls(**values)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))
