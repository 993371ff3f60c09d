"""The app's requests: the page's controls, derived from the declarations, and raw control values -> `Settings`.
No Gradio in here.

- Declarations: the sampler's are `SamplerConfig`'s (`fpdm_core.options`); the request's own (budget mode,
  class, seed, number of images) are `Settings`' fields, declared the same way. `APP_DEFAULTS` holds the
  few defaults the page changes (a small request that answers in about a second) and `MAX_WORK` the
  work one request may do.
- `controls(class_choices)`: one `Control` per input (kind, label, info, default, bounds, choices, place):
  the page builds its widgets from these, so a new `SamplerConfig` field shows up in the app by itself.
- `settings_from_ui(**values)`: raw values by control name (numbers, None from a cleared box, anything an
  API client sends) -> `Settings`, or `ExploreError` naming the field. A control the chosen budget mode,
  solver or reverse step does not use is ignored, whatever it holds.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace

import torch

from .cli import MAX_SEED
from .data import FASHION_MNIST_CLASSES
from .models import ModelConfig
from .options import Option, option, options_of
from .sampling import SamplerConfig

MODE_STEPS = "steps x iterations"
MODE_BUDGET_STEPS = "budget + steps"
MODE_BUDGET = "budget (timestep smoothing)"
BUDGET_MODES = (MODE_STEPS, MODE_BUDGET_STEPS, MODE_BUDGET)
# the sampler fields each budget mode reads (the others of MODE_CONTROLLED are ignored in that mode)
MODE_FIELDS = {MODE_STEPS: ("steps", "iterations"), MODE_BUDGET_STEPS: ("steps", "budget"),
               MODE_BUDGET: ("budget", "min_iterations")}
MODE_CONTROLLED = ("steps", "iterations", "budget", "min_iterations")
ALL_CLASSES = "all classes (cycling)"
UNCONDITIONAL = "unconditional"
MAX_IMAGES = 64  # per request: one grid on the page
MAX_WORK = 20_000  # block evaluations x images per request, FPDM and DiT (or both compared runs) together
# The page's own defaults where they differ from SamplerConfig's: a request that completes within a second on
# two idle CPU cores (bench `speed`, the app rows: 10 x 3 took 1.04 s), on a split the landscape measured
# (8 x 3 = 40 block evaluations, DiT: 5 steps). Precision stays SamplerConfig's fp32: bf16 moved metrics beyond
# their intervals (bench `precision`).
APP_DEFAULTS = {"steps": 8, "iterations": 3, "budget": 40}
SAMPLER_OPTIONS = options_of(SamplerConfig)
WORK_NOTE = f"at most {MAX_WORK:,} block evaluations x images per request (FPDM and DiT together)"


class ExploreError(ValueError):
    """An invalid request, with a one-line message for the person who made it."""


def short_repr(value) -> str:
    """A user's value for a message: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def _app_config() -> SamplerConfig:
    return SamplerConfig(**{k: v for k, v in APP_DEFAULTS.items() if k != "budget"})


@dataclass(frozen=True)
class Settings:
    """What the controls ask for: the request's own fields (declared here) and a checked `SamplerConfig`."""

    budget_mode: str = option(MODE_STEPS, "fix steps x iterations, or fix a budget in block evaluations per image",
                              choices=BUDGET_MODES, label="budget mode", app="main")
    class_choice: str = option(ALL_CLASSES, "the class of every image, all classes in turn, or none",
                               label="class", app="main")
    seed: int = option(0, f"the noise's seed, 0 to 2**32 - 1 = {MAX_SEED:,} (what torch's generator keeps)",
                       lo=0, hi=MAX_SEED, label="seed", app="main")
    num_images: int = option(10, "images in this request", lo=1, hi=MAX_IMAGES, label="number of images", app="main")
    config: SamplerConfig = field(default_factory=_app_config)

    def __post_init__(self):
        for name, opt in options_of(Settings).items():
            problem = opt.problem(getattr(self, name))
            if problem:
                raise ExploreError(f"{opt.label} {problem}")
        used = MODE_FIELDS[self.budget_mode]
        if ("budget" in used) != (self.config.budget is not None):
            raise ExploreError(f"budget mode {self.budget_mode!r} {'needs' if 'budget' in used else 'takes no'} "
                               "budget in the sampler settings")

    def with_sampler(self, **changes) -> "Settings":
        """These settings with some sampler fields changed (re-checked: ExploreError if they do not fit)."""
        try:
            return replace(self, config=replace(self.config, **changes))
        except ValueError as e:
            raise ExploreError(_sampler_message(e)) from None

    def to_dict(self) -> dict:
        """JSON-ready: the request's fields and the sampler's."""
        return {**{k: getattr(self, k) for k in options_of(Settings)}, "sampler": self.config.to_dict()}

    def labels(self, config: ModelConfig) -> torch.Tensor:
        """Class ids (num_images,): one class, every class in turn, or the null class."""
        names = class_names(config)
        n, k = self.num_images, config.num_classes
        if self.class_choice == UNCONDITIONAL or (self.class_choice == ALL_CLASSES and k == 0):
            return torch.full((n,), k, dtype=torch.long)
        if self.class_choice == ALL_CLASSES:
            return torch.arange(n) % k
        if self.class_choice not in names:
            raise ExploreError(f"unknown class {short_repr(self.class_choice)}; this model knows: {', '.join(names) or 'none'} "
                               f"(or '{ALL_CLASSES}', '{UNCONDITIONAL}')")
        return torch.full((n,), names.index(self.class_choice), dtype=torch.long)


REQUEST_OPTIONS = options_of(Settings)
ALL_OPTIONS = {**REQUEST_OPTIONS, **{k: o for k, o in SAMPLER_OPTIONS.items() if o.app is not None}}
FIELD_LABELS = {name: opt.label or name for name, opt in ALL_OPTIONS.items()}  # every control's name in messages


def class_names(config: ModelConfig) -> tuple[str, ...]:
    """Fashion-MNIST names for a 10-class 28x28 grey model, else 'class i'."""
    if config.num_classes == len(FASHION_MNIST_CLASSES) and config.input_size == 28 and config.in_channels == 1:
        return FASHION_MNIST_CLASSES
    return tuple(f"class {i}" for i in range(config.num_classes))


def class_choices(config: ModelConfig | None) -> list[str]:
    """The class control's choices for a model (without one: every class, or unconditional)."""
    return [ALL_CLASSES, *(class_names(config) if config is not None else ()), UNCONDITIONAL]


# ----------------------------------------------------------------------------- controls
@dataclass(frozen=True)
class Control:
    """One input of the page, derived from its `Option`: what widget, with which bounds, choices and default."""

    name: str
    kind: str  # "slider" | "number" | "radio" | "dropdown" | "checkbox"
    label: str
    info: str
    value: object
    place: str  # "main" or "advanced"
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    integer: bool = False
    choices: tuple = ()
    none_is_zero: bool = False  # an optional number: 0 (or a cleared box) means unset


SLIDER_POSITIONS = 1000  # a range with more steps than this gets a number box instead of a slider
APP_CAPS = {"budget": (MAX_WORK, WORK_NOTE)}  # a limit the page adds where the declaration has none, and why


def _usage_text(opt: Option) -> str:
    """When the page reads an option: in which budget modes, or with which value of another control."""
    if opt.name in MODE_CONTROLLED:
        return f" [used in: {', '.join(m for m, used in MODE_FIELDS.items() if opt.name in used)}]"
    if opt.when is not None:
        return f" [only with {FIELD_LABELS[opt.when[0]]} {opt.when[1]}]"
    return ""


def control_for(opt: Option, choices: tuple = ()) -> Control:
    """The widget for one option (`choices` for a field whose choices come from the model)."""
    label = (opt.label or opt.name)[:1].upper() + (opt.label or opt.name)[1:]
    info = opt.help + _usage_text(opt)
    value = APP_DEFAULTS.get(opt.name, opt.default)
    kw = dict(name=opt.name, label=label, place=opt.app)
    if opt.type is bool:
        return Control(kind="checkbox", info=info, value=value, **kw)
    if opt.choices or opt.type is str:
        return Control(kind="radio" if opt.choices else "dropdown", info=info, value=value,
                       choices=tuple(choices or opt.choices), **kw)
    step = 1 if opt.type is int else opt.ui_step
    lo, hi = opt.ui_bounds(step)
    cap, why = APP_CAPS.get(opt.name, (None, ""))
    if cap is not None:
        hi, info = (cap if hi is None else min(hi, cap)), f"{info}; {why}"
    if opt.optional and opt.name not in MODE_CONTROLLED:  # the box takes 0 for "unset": its range starts at 0
        return Control(kind="number", info=f"{info}; 0 = unset", value=0 if value is None else value, lo=0, hi=hi,
                       integer=opt.type is int, none_is_zero=True, **kw)
    slider = hi is not None and (hi - lo) / step <= SLIDER_POSITIONS
    return Control(kind="slider" if slider else "number", info=info, value=value, lo=lo, hi=hi, step=step,
                   integer=opt.type is int, **kw)


def controls(class_choice_list: list[str]) -> dict[str, Control]:
    """Every input of the page by name: the budget mode, the sampler's main options, the request's own, then the
    sampler's advanced options (the page's order)."""
    sampler = [o for o in SAMPLER_OPTIONS.values() if o.app is not None]
    ordered = ([REQUEST_OPTIONS["budget_mode"]] + [o for o in sampler if o.app == "main"]
               + [o for n, o in REQUEST_OPTIONS.items() if n != "budget_mode"] + [o for o in sampler if o.app == "advanced"])
    return {o.name: control_for(o, tuple(class_choice_list) if o.name == "class_choice" else ()) for o in ordered}


_PAGE = controls([])
DEFAULTS = {name: c.value for name, c in _PAGE.items()}  # every control's value when the page opens
NONE_IS_ZERO = {name: c.none_is_zero for name, c in _PAGE.items()}


# ----------------------------------------------------------------------------- raw values -> settings
def _num(v) -> str:
    """A number for a message: whole numbers in full (a seed), others short."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _from_ui(opt: Option, value, none_is_zero: bool = False):
    """One raw control value as its option's type, checked against its declaration; ExploreError naming it."""
    label = FIELD_LABELS[opt.name]
    if opt.type is bool:
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise ExploreError(f"{label} must be true or false, got {short_repr(value)}")
    if opt.choices:
        if isinstance(value, str) and value.lower() in opt.choices:
            return value.lower()
        raise ExploreError(f"unknown {label} {short_repr(value)}; choose one of: {', '.join(map(str, opt.choices))}")
    if opt.type is str:
        if isinstance(value, str):
            return value
        raise ExploreError(f"{label} must be text, got {short_repr(value)}")
    if none_is_zero and (value is None or value == "" or (_real(value) and value == 0)):
        return None
    if value is None or value == "":
        raise ExploreError(f"{label} is empty: enter {opt.range_text()}")
    if not _real(value):
        raise ExploreError(f"{label} must be {opt.range_text()}, got {short_repr(value)}")
    if not math.isfinite(value):
        raise ExploreError(f"{label} must be a finite number, got {value}")
    if opt.type is int and value != int(value):
        raise ExploreError(f"{label} must be a whole number, got {_num(value)}")
    value = int(value) if opt.type is int else float(value)
    problem = opt.problem(value)
    if problem:
        raise ExploreError(f"{label} {problem}{' (0 = unset)' if none_is_zero else ''}")
    return value


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _sampler_message(e: ValueError) -> str:
    """A SamplerConfig error with its field names as the page calls them."""
    text = str(e)
    for name, label in FIELD_LABELS.items():
        text = text.replace(f"SamplerConfig.{name} ", f"{label} ")
    return text


def used_fields(budget_mode: str, choices: dict) -> tuple[str, ...]:
    """The sampler controls a request reads: the budget mode's numbers, and the options whose `when` holds."""
    out = []
    for name, opt in SAMPLER_OPTIONS.items():
        if opt.app is None:
            continue
        if name in MODE_CONTROLLED:
            if name in MODE_FIELDS[budget_mode]:
                out.append(name)
        elif opt.when is None or choices.get(opt.when[0]) == opt.when[1]:
            out.append(name)
    return tuple(out)


def settings_from_ui(**values) -> Settings:
    """Raw control values by name (missing ones: the page's defaults) -> `Settings`; ExploreError naming the field."""
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ExploreError(f"unknown controls {unknown}; the page has: {', '.join(DEFAULTS)}")
    raw = {**DEFAULTS, **values}
    mode = _from_ui(REQUEST_OPTIONS["budget_mode"], raw["budget_mode"])
    if not isinstance(raw["class_choice"], str):
        raise ExploreError(f"class must be a class name, got {short_repr(raw['class_choice'])}")
    request = {name: _from_ui(opt, raw[name]) for name, opt in REQUEST_OPTIONS.items() if name != "class_choice"}
    choices = {n: _from_ui(o, raw[n]) for n, o in SAMPLER_OPTIONS.items() if o.app is not None and not o.numeric}
    sampler = {}
    for name in used_fields(mode, choices):
        opt = SAMPLER_OPTIONS[name]
        sampler[name] = choices[name] if name in choices else _from_ui(opt, raw[name], NONE_IS_ZERO[name])
    try:
        config = SamplerConfig(**sampler)
    except ValueError as e:
        raise ExploreError(_sampler_message(e)) from None
    return Settings(budget_mode=mode, class_choice=raw["class_choice"], seed=request["seed"],
                    num_images=request["num_images"], config=config)
