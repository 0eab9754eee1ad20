"""Fuzzing what a user controls: config dicts, --set strings, config files and command lines (hypothesis).

Whatever comes in, the answer is a valid result or one ConfigError / one-line error, never another exception.
Each property runs DDPMKIT_FUZZ_EXAMPLES examples (default 100, a few seconds each); for a longer run by hand:

    DDPMKIT_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py --hypothesis-show-statistics
"""
import argparse
import contextlib
import io
import json
import math
import os
import re
import typing

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ddpmkit import cli
from ddpmkit.config import (BEST_BY, BETA_SCHEDULE_NAMES, COMPILE_MODES, DATASETS, IN_MEMORY, LOSSES, PRECISIONS,
                            PREDICTIONS, PRESETS, RESIZE_MODES, SAMPLER_NAMES, VARIANCES, Config, config_from_dict,
                            load_config_file, resolve_config)
from ddpmkit.errors import ConfigError

FUZZ = settings(max_examples=int(os.environ.get("DDPMKIT_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

SECTIONS = typing.get_type_hints(Config)
FIELDS = {section: typing.get_type_hints(cls) for section, cls in SECTIONS.items()}
WORDS = [*DATASETS, *RESIZE_MODES, *BETA_SCHEDULE_NAMES, *PREDICTIONS, *LOSSES, *VARIANCES, *PRECISIONS, *IN_MEMORY,
         *COMPILE_MODES, *BEST_BY, *SAMPLER_NAMES, "conv", "space_to_depth", "nearest", "transposed"]
# Numbers at the edges: beyond int64, beyond a float, beyond what Python converts to text (4300 digits).
HUGE_INTS = [2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64 - 1, 2**64, 10**400]
TRICKY_TEXT = ["nan", "NaN", "-nan", "inf", "+Infinity", "-inf", "1e400", "-1e400", "1e-400", "1_000", " 7 ", "0x10",
               "1.5", "-1", "0", "2**64", str(2**64), "9" * 30, "1,2", "[1, 2]", "(4,)", "none", "true", "yes", "",
               " ", "1,nan", "١٢", "a\nb", "\x00", "\udcff"]  # \udcff: how Python passes a non-UTF-8 byte in argv

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from(HUGE_INTS), st.floats(),
                    st.sampled_from(TRICKY_TEXT), st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def plausible(typ) -> st.SearchStrategy:
    """Values close to what a field takes, so that many dicts get past coercion into validate()."""
    if typing.get_origin(typ) is tuple:
        item = typing.get_args(typ)[0]
        return st.lists(plausible(item), max_size=5) | st.lists(plausible(item), max_size=5).map(
            lambda v: ",".join(map(str, v)))
    if typ is bool:
        return st.booleans() | st.sampled_from(["yes", "no", "on", "off", "1", "0", "TRUE", "maybe", 1, 0])
    if typ is int:
        return (st.integers(-2, 64) | st.integers(0, 2**16) | st.sampled_from(HUGE_INTS) |
                st.integers(-2, 64).map(str) | st.integers(0, 64).map(float))
    if typ is float:
        return (st.floats() | st.floats(0, 1) | st.floats(0, 1).map(str) | st.sampled_from(TRICKY_TEXT) |
                st.integers(-2, 10) | st.sampled_from(HUGE_INTS))
    return st.sampled_from(WORDS) | st.text(max_size=10)


def sensible(typ) -> st.SearchStrategy:
    """Values a field usually takes, so that many dicts pass coercion and reach validate()'s cross-field checks."""
    if typing.get_origin(typ) is tuple:
        return st.lists(sensible(typing.get_args(typ)[0]), min_size=1, max_size=4)
    return {bool: st.booleans(), int: st.integers(0, 64), float: st.floats(0, 0.99)}.get(typ, st.sampled_from(WORDS))


def section_dict(section: str, junk: bool) -> st.SearchStrategy:
    """{key: value} for one section: real keys with sensible, odd or any values (and, with ``junk``, other keys)."""
    types = FIELDS[section]
    real = st.sampled_from(list(types)).flatmap(
        lambda k: st.tuples(st.just(k), st.one_of(sensible(types[k]), sensible(types[k]), plausible(types[k]),
                                                  json_values)))
    entries = real | real | real | st.tuples(st.text(max_size=8), json_values) if junk else real
    return st.lists(entries, max_size=4).map(dict)


def _section(name: str) -> st.SearchStrategy:
    return st.tuples(st.just(name), section_dict(name, junk=True) | json_values if name in FIELDS else json_values)


# Two of three dicts have only real sections and keys, so that many reach validate(); the third may hold anything.
near_misses = st.lists(st.sampled_from(list(SECTIONS)).flatmap(
    lambda name: st.tuples(st.just(name), section_dict(name, junk=False))), max_size=4).map(dict)
config_dicts = near_misses | near_misses | st.lists(
    (st.sampled_from(list(SECTIONS)) | st.text(max_size=8)).flatmap(_section), max_size=4).map(dict)


def check_config(cfg: Config) -> None:
    """A config that came back is valid: finite floats, whole numbers torch can hold, and it reads back unchanged
    from its own JSON (which refuses NaN here)."""
    def numbers(value):
        if isinstance(value, (list, tuple)):
            for v in value:
                yield from numbers(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield value
    for section in cfg.to_dict().values():
        for value in section.values():
            for number in numbers(value):
                assert math.isfinite(number) and (isinstance(number, float) or -2**63 <= number < 2**63)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict(), allow_nan=False))) == cfg


def one_line(message: str) -> None:
    assert message and not set(message) & set("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"), repr(message)


def error_kind(message: str) -> str:
    """What a ConfigError was about ('train.lr', 'unknown key', ...), for --hypothesis-show-statistics."""
    for kind in ("unknown key", "unknown section", "must be a table", "could not be parsed", "expected a table",
                 "unknown preset", "expected section.key=value"):
        if kind in message:
            return kind
    return message.split(":")[0]


def outcome(call) -> None:
    """Run ``call``; it returns a Config or raises a one-line ConfigError."""
    try:
        cfg = call()
    except ConfigError as err:
        one_line(str(err))
        event(f"ConfigError: {error_kind(str(err))}")
        return
    check_config(cfg)
    event("valid Config")


@FUZZ
@given(config_dicts)
def test_config_from_dict(d):
    outcome(lambda: config_from_dict(d))


def set_text(value) -> str:
    """How a value is written after --set section.key=."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value).lower() if isinstance(value, bool) \
        else str(value)


PAIRS = [(section, key, typ) for section, types in FIELDS.items() for key, typ in types.items()]
well_formed = st.sampled_from(PAIRS).flatmap(lambda p: st.one_of(
    sensible(p[2]).map(set_text), sensible(p[2]).map(set_text), plausible(p[2]).map(set_text),
    st.sampled_from(TRICKY_TEXT), st.text(max_size=12)).map(lambda v: f"{p[0]}.{p[1]}={v}"))
odd_names = st.tuples(st.sampled_from(list(SECTIONS)) | st.text(max_size=6), st.text(max_size=6),
                      st.text(max_size=8)).map(lambda t: f"{t[0]}.{t[1]}={t[2]}")
set_strings = st.one_of(*[well_formed] * 6, odd_names, st.text(max_size=20))
presets = st.one_of(st.none(), *[st.sampled_from(sorted(PRESETS))] * 3, st.text(max_size=8))


@FUZZ
@given(presets, st.lists(set_strings, max_size=4))
def test_resolve_config_with_set_strings(preset, overrides):
    outcome(lambda: resolve_config(preset, overrides=overrides))


def toml_literal(value) -> str:
    """A TOML spelling of a JSON-like value (or a deliberately odd one for the TOML parser)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else "inf" if value == math.inf else "-inf" if value == -math.inf \
            else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_literal, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_literal(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "1979-05-27T07:32:00Z"  # TOML has no null: a datetime, which no field takes
    return json.dumps(value)


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def toml_document(d: dict) -> str:
    lines = []
    for section, values in d.items():
        if isinstance(values, dict):
            lines.append(f"[{toml_key(section)}]")
            lines += [f"{toml_key(k)} = {toml_literal(v)}" for k, v in values.items()]
        else:
            lines.insert(0, f"{toml_key(section)} = {toml_literal(values)}")
    return "\n".join(lines) + "\n"


documents = st.one_of(
    config_dicts.map(json.dumps).map(str.encode),          # NaN and Infinity included: Python's json writes them
    config_dicts.map(toml_document).map(str.encode),
    st.binary(max_size=200),
    st.sampled_from([b"[train]\nsteps = " + b"1" * 5000, b'{"a": ' + b"[" * 5000, b"a = " + b"[" * 5000,
                     b"\xff\xfe[train]", b"[train]\nlr = nan\n", b'{"train": {"lr": Infinity}}']),
)


@pytest.fixture(scope="module")
def file_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_files")


@FUZZ
@given(documents, st.none() | st.tuples(st.integers(0, 300), st.binary(min_size=1, max_size=4)),
       st.sampled_from([".toml", ".json"]))
def test_config_files(file_dir, document, splice, suffix):
    if splice:  # a few bytes put into a well-formed document: near-misses of the real syntax
        at, extra = splice
        document = document[:at] + extra + document[at:]
    path = file_dir / f"c{suffix}"
    path.write_bytes(document)
    try:
        d = load_config_file(path)
    except ConfigError as err:
        one_line(str(err))
        event(f"ConfigError when read: {error_kind(str(err))}")
        return
    assert isinstance(d, dict)
    outcome(lambda: resolve_config(config_file=path))


# -- the command line -------------------------------------------------------------------------------------------------

def _commands(parser=None, prefix=()):
    """{command words: parser}, 'classifier train' and 'classifier judge' included."""
    found = {}
    for action in (parser or cli.build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, (*prefix, name)) if sub._subparsers else {(*prefix, name): sub})
    return found


COMMANDS = _commands()
MISSING = "/nonexistent/ddpmkit-fuzz"
# Appended last (argparse keeps the last value), so that a command stops at its first real step: loading a
# checkpoint or a config file that does not exist. 'plot-schedule' and 'classifier train' would do real work: only
# their parsing is fuzzed.
STOP_EARLY = {("train",): ["--config", f"{MISSING}.toml"], ("sample",): ["--checkpoint", MISSING],
              ("interpolate",): ["--checkpoint", MISSING], ("strip",): ["--checkpoint", MISSING],
              ("animate",): ["--checkpoint", MISSING], ("classifier", "judge"): ["--checkpoint", MISSING],
              ("evaluate",): ["--checkpoint", MISSING, "--metrics", "fd"], ("config",): []}

values = st.one_of(st.sampled_from(TRICKY_TEXT), st.integers().map(str), st.sampled_from(HUGE_INTS).map(str),
                   st.floats().map(str), st.text(max_size=10),
                   st.lists(st.sampled_from(["0", "1", "3", "nan", "-2", "x", ""]), max_size=4).map(",".join))


def tokens(action: argparse.Action) -> st.SearchStrategy:
    """One option and, usually, a value of the kind it takes; sometimes any value, or none."""
    if action.choices:
        usual = st.sampled_from([str(c) for c in action.choices])
    elif getattr(action.type, "checked", False):
        usual = st.integers(0, 100).map(str) | st.floats(0, 10).map(str) | st.sampled_from(["0,1", "10,20"])
    elif action.nargs == 0:  # a flag
        usual = st.none()
    else:
        usual = st.text(max_size=10)
    return st.tuples(st.sampled_from(action.option_strings), st.one_of(usual, usual, values, st.none()))


def argv_for(words: tuple, help: bool) -> st.SearchStrategy:
    actions = [a for a in COMMANDS[words]._actions if a.option_strings and (help or a.dest != "help")]
    junk = st.tuples(st.sampled_from(["--bogus", "-x", "--", "-", "--see"]), st.none() | values)
    pairs = st.lists(st.one_of(*map(tokens, actions), junk), max_size=6)
    return pairs.map(lambda p: [*words, *(t for pair in p for t in pair if t is not None)])


# The required options, put first so that what the fuzzer adds can override them or clash with them.
REQUIRED = {("sample",): ["--checkpoint", "m.pt"], ("interpolate",): ["--checkpoint", "m.pt"],
            ("strip",): ["--checkpoint", "m.pt"], ("animate",): ["--checkpoint", "m.pt"],
            ("evaluate",): ["--checkpoint", "m.pt"], ("classifier", "judge"): ["--checkpoint", "m.pt"],
            ("classifier", "train"): ["--dataset", "mnist"]}


def argvs(help: bool, commands) -> st.SearchStrategy:
    return st.sampled_from(commands).flatmap(lambda words: argv_for(words, help).map(
        lambda argv: [*words, *REQUIRED.get(words, []), *argv[len(words):]]))


def check_args(args: argparse.Namespace) -> None:
    """What parse_args lets through: finite floats, whole numbers in 0 .. 2**63 - 1, seed + count within that."""
    for value in vars(args).values():
        for number in value if isinstance(value, tuple) else [value]:
            if isinstance(number, float):
                assert math.isfinite(number)
            elif isinstance(number, int) and not isinstance(number, bool):
                assert 0 <= number <= cli.MAX_WHOLE
    images = {"sample": "num_samples", "evaluate": "num_samples", "animate": "per_class", "classifier": "per_class"}
    count = getattr(args, images.get(args.command, ""), None)  # image i uses seed + i
    if count is not None and hasattr(args, "seed"):
        assert args.seed + count - 1 <= cli.MAX_WHOLE


@FUZZ
@given(argvs(help=False, commands=sorted(COMMANDS)))
def test_parse_args_of_every_command(argv):
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # a value such as '--he' asks for help
            args = cli.parse_args(argv)
    except cli.UsageError as err:
        event("UsageError")
        assert str(err).endswith(" --help'")
        return
    except cli.HelpShown:
        event("help shown")
        return
    check_args(args)
    event("parsed")


@FUZZ
@given(argvs(help=True, commands=sorted(STOP_EARLY)))
def test_main_returns_0_or_2_with_at_most_one_error_line(argv):
    argv = argv + STOP_EARLY[tuple(argv[:2]) if argv[0] == "classifier" else (argv[0],)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    assert status in (0, 2)
    stderr = err.getvalue()
    if status == 0:
        assert stderr == ""
        if not out.getvalue().startswith("usage:"):  # 'config' printed the resolved configuration
            check_config(config_from_dict(json.loads(out.getvalue())))
        event("status 0")
    else:
        assert stderr.startswith("ddpmkit: error: ") and stderr.endswith("\n")
        one_line(stderr[:-1])
        event("status 2: " + ("usage" if stderr.endswith(" --help'\n") else "at the first step"))
