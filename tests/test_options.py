"""Every sampler option declared once: the library (`SamplerConfig`), the command lines (`python -m fpdm_core.sample`,
`python -m fpdm_core.metrics evaluate`) and the app expose the same options with the same defaults, choices and
limits; values at a limit are accepted and values just outside it refused by all three."""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from fpdm_core import app_runs as ar
from fpdm_core import app_settings as aps
from fpdm_core import metrics, options, sample
from fpdm_core.options import Option, option, options_of
from fpdm_core.sampling import SamplerConfig

ROOT = Path(__file__).resolve().parent.parent
OPTS = options_of(SamplerConfig)
NUMERIC = [name for name, o in OPTS.items() if o.numeric]
CHOICE = [name for name, o in OPTS.items() if o.choices]
# What a value needs around it to be read at all: the app's budget mode, and the `when` of an option.
APP_CONTEXT = {"budget": dict(budget_mode=aps.MODE_BUDGET), "min_iterations": dict(budget_mode=aps.MODE_BUDGET),
               "anderson_m": dict(solver="anderson")}
CLI_CONTEXT = {"anderson_m": ["--solver", "anderson"]}


def sampler_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest in OPTS}


def evaluate_parser() -> argparse.ArgumentParser:
    sub = next(a for a in metrics.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["evaluate"]


PARSERS = {"sample": sample.build_parser(), "metrics evaluate": evaluate_parser()}


# ----------------------------------------------------------------------------- one declaration, three readers
def test_every_field_is_declared_with_help_and_a_place():
    fields = dataclasses.fields(SamplerConfig)
    assert [f.name for f in fields] == list(OPTS), "every SamplerConfig field carries an Option"
    for f in fields:
        opt = OPTS[f.name]
        assert opt.help and opt.label and opt.app in (*options.APP_PLACES, None), f.name
        assert opt.default == f.default and opt.type in (int, float, bool, str), f.name
        if opt.numeric:
            assert opt.lo is not None, f"{f.name}: a number needs a lower limit"
            assert opt.problem(opt.default) is None or opt.default is None, f"{f.name}: the default is refused"
        if opt.when is not None:
            assert opt.when[0] in OPTS, f.name


@pytest.mark.parametrize("which", list(PARSERS))
def test_command_lines_expose_every_field_with_its_default_and_choices(which):
    actions = sampler_actions(PARSERS[which])
    assert set(actions) == set(OPTS), f"missing flags: {set(OPTS) - set(actions)}"
    for name, opt in OPTS.items():
        a = actions[name]
        assert opt.flag in a.option_strings and a.default == opt.default, name
        assert opt.help in a.help, name
        if opt.type is bool:
            assert isinstance(a, argparse.BooleanOptionalAction) and f"--no-{opt.flag[2:]}" in a.option_strings
        elif opt.choices:
            assert tuple(a.choices) == opt.choices, name
        else:
            assert a.choices is None and opt.range_text() in a.help, name


def test_the_app_shows_every_option_it_declares_with_the_declared_bounds_and_choices():
    specs = aps.controls(aps.class_choices(None))
    shown = {n for n, o in OPTS.items() if o.app is not None}
    assert shown == set(OPTS), "every sampler option is in the app (declare app=None to leave one out)"
    assert shown <= set(specs) and set(aps.REQUEST_OPTIONS) <= set(specs)
    for name in shown:
        opt, c = OPTS[name], specs[name]
        assert c.place == opt.app and c.value == aps.APP_DEFAULTS.get(name, opt.default if opt.default is not None else 0)
        if opt.type is bool:
            assert c.kind == "checkbox"
        elif opt.choices:
            assert c.kind == "radio" and c.choices == opt.choices, name
        else:
            assert c.integer == (opt.type is int), name
            lo, hi = opt.ui_bounds(c.step)
            if c.none_is_zero:  # an optional box: 0 = unset, then the declared range
                assert opt.optional and c.lo == 0 and opt.problem(None) is None and c.hi == hi, name
            else:  # the declared range; the page adds a bound only where the declaration has none
                assert (c.lo, c.hi) == (lo, hi if name not in aps.APP_CAPS else aps.APP_CAPS[name][0]), name
    assert all(OPTS[name].hi is None for name in aps.APP_CAPS), "the page never tightens a declared limit"


def test_the_built_page_has_those_controls_and_passes_them_by_name(tmp_path):
    spec = importlib.util.spec_from_file_location("fpdm_app_main_options", ROOT / "app" / "main.py")
    main = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = main
    spec.loader.exec_module(main)
    demo = main.build_demo(tmp_path, landscape_file=ROOT / "tests" / "fixtures" / "landscape_small.json")
    props = {c["props"].get("elem_id"): (c["type"], c["props"]) for c in demo.config["components"]}
    for name, c in aps.controls(aps.class_choices(None)).items():
        kind, p = props[name.replace("_", "-")]
        assert kind == c.kind, name  # the widget's Gradio type
        if c.kind in ("slider", "number"):
            assert (p.get("minimum"), p.get("maximum")) == (c.lo, c.hi), name
        if c.kind in ("radio", "dropdown"):
            assert [x[1] for x in p["choices"]] == list(c.choices), name
        assert p["value"] == c.value, name
    endpoints = demo.get_api_info()["named_endpoints"]
    for endpoint in ("/generate", "/compare"):
        names = [x["parameter_name"] for x in endpoints[endpoint]["parameters"]]
        assert set(aps.DEFAULTS) <= set(names), endpoint


# ----------------------------------------------------------------------------- limits: accepted and refused by all three
def library_accepts(name, value) -> bool:
    kw = {"solver": "anderson"} if name == "anderson_m" else {}
    try:
        SamplerConfig(**kw, **{name: value})
        return True
    except ValueError:
        return False


def cli_accepts(name, value) -> bool:
    p = sample.build_parser()
    try:
        options.from_args(SamplerConfig, p.parse_args([*CLI_CONTEXT.get(name, []), OPTS[name].flag, str(value)]), p)
        return True
    except SystemExit:
        return False


def app_accepts(name, value) -> bool:
    try:
        s = aps.settings_from_ui(**APP_CONTEXT.get(name, {}), **{name: value})
    except aps.ExploreError:
        return False
    assert getattr(s.config, name) == value, name  # read, not ignored
    return True


def all_three(name, value) -> tuple[bool, bool, bool]:
    return library_accepts(name, value), cli_accepts(name, value), app_accepts(name, value)


def edges(opt: Option) -> list[tuple[float, bool]]:
    """(value, accepted) at and just beyond each declared limit."""
    out = []
    for limit, is_open, outward in ((opt.lo, opt.lo_open, -math.inf), (opt.hi, opt.hi_open, math.inf)):
        if limit is None:
            continue
        if opt.type is int:
            out += [(limit, not is_open), (limit + (1 if outward > 0 else -1), False)]
        else:
            out += [(float(limit), not is_open), (math.nextafter(float(limit), outward), False)]
    return out


@pytest.mark.parametrize("name", NUMERIC)
def test_each_limit_is_the_same_for_library_cli_and_app(name):
    opt, control = OPTS[name], aps.controls([])[name]
    for value, accepted in edges(opt):
        if control.none_is_zero and value == 0:  # the app's box reads 0 as unset, never as the value 0
            assert library_accepts(name, value) is cli_accepts(name, value) is accepted
            assert aps.settings_from_ui(**{name: 0}).config == aps.Settings().config
            continue
        assert all_three(name, value) == (accepted,) * 3, (name, value)


def test_the_app_budget_cap_is_the_work_cap():
    assert aps.controls([])["budget"].hi == aps.MAX_WORK and aps.WORK_NOTE in aps.controls([])["budget"].info
    ar.check_work(aps.MAX_WORK, 1, "FPDM")
    with pytest.raises(aps.ExploreError, match="the app's cap is"):
        ar.check_work(aps.MAX_WORK + 1, 1, "FPDM")


def inside_and_outside(opt: Option):
    """(value, accepted) drawn across the whole number line around the declared range."""
    if opt.type is int:
        lo, hi = int(opt.lo), int(opt.hi if opt.hi is not None else opt.lo + 10**6)
        return st.one_of(st.integers(lo, hi).map(lambda v: (v, True)),
                         st.integers(max_value=lo - 1).map(lambda v: (v, False)),
                         st.integers(min_value=hi + 1).map(lambda v: (v, opt.hi is None)))
    inside = st.floats(opt.lo, opt.hi, exclude_min=opt.lo_open, exclude_max=opt.hi_open, allow_infinity=False)
    below = st.floats(max_value=opt.lo, exclude_max=not opt.lo_open, allow_infinity=False, allow_nan=False)
    out = [inside.map(lambda v: (v, True)), below.map(lambda v: (v, False))]
    if opt.hi is not None:
        out.append(st.floats(min_value=opt.hi, exclude_min=not opt.hi_open, allow_infinity=False, allow_nan=False)
                   .map(lambda v: (v, False)))
    return st.one_of(out)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_number_is_accepted_or_refused_alike_by_all_three(data):
    name = data.draw(st.sampled_from(NUMERIC))
    value, accepted = data.draw(inside_and_outside(OPTS[name]))
    if aps.controls([])[name].none_is_zero and value == 0:
        return  # the app's 0 = unset (checked above)
    assert all_three(name, value) == (accepted,) * 3, (name, value)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_choices_are_the_same_for_library_cli_and_app(data):
    name = data.draw(st.sampled_from(CHOICE))
    opt = OPTS[name]
    good = data.draw(st.sampled_from(opt.choices))
    ctx = {"allocation": dict(tol=0.01)}.get(name, {})  # adaptive needs a tolerance
    assert getattr(SamplerConfig(**ctx, **{name: good}), name) == good
    p = sample.build_parser()
    flags = [opt.flag, good, *(["--tol", "0.01"] if ctx else [])]
    assert getattr(options.from_args(SamplerConfig, p.parse_args(flags)), name) == good
    assert getattr(aps.settings_from_ui(**ctx, **{name: good}).config, name) == good
    bad = data.draw(st.text(min_size=1, max_size=8).filter(lambda v: v.lower() not in opt.choices))
    assert all_three(name, bad) == (False, False, False), (name, bad)


# ----------------------------------------------------------------------------- the machinery on a toy config
@dataclass(frozen=True)
class Toy:
    n: int = option(3, "a count", lo=1, hi=9)
    rate: float = option(0.5, "a rate", lo=0.0, hi=1.0, lo_open=True, ui_step=0.1)
    mode: str = option("a", "a mode", choices=("a", "b"))
    extra: float | None = option(None, "only in mode b", lo=0.0, when=("mode", "b"))
    flag: bool = option(True, "a switch", app=None)

    def __post_init__(self):
        options.check_fields(self)


def test_adding_an_option_is_one_declaration():
    p = argparse.ArgumentParser()
    options.add_arguments(p, Toy)
    assert options.from_args(Toy, p.parse_args([])) == Toy()
    assert options.from_args(Toy, p.parse_args(["--n", "9", "--rate", "1", "--mode", "b", "--extra", "2",
                                                 "--no-flag"])) == Toy(9, 1.0, "b", 2.0, False)
    with pytest.raises(ValueError, match="--extra is only used with --mode b, not a"):
        options.from_args(Toy, p.parse_args(["--extra", "2"]))
    with pytest.raises(ValueError, match=r"Toy.n must be an integer in 1..9, got 10"):
        Toy(n=10)
    with pytest.raises(ValueError, match=r"Toy.rate must be a finite number > 0.0 and <= 1.0, got 0.0"):
        Toy(rate=0.0)
    with pytest.raises(ValueError, match="Toy.mode must be one of a, b; got 'c'"):
        Toy(mode="c")
    with pytest.raises(ValueError, match="Toy.flag must be true or false"):
        Toy(flag=1)
    assert options_of(Toy)["rate"].ui_bounds() == (0.1, 1.0)  # the open end moves in by one slider step
    assert aps.control_for(options_of(Toy)["rate"]).kind == "slider"


def test_a_bad_declaration_is_refused():
    with pytest.raises(ValueError, match="app must be one of"):
        option(1, "x", app="sidebar")
