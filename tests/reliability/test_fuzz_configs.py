"""Fuzzing the config entry points of ``sparsecl continual`` and ``sparsecl multitask``: random YAML files
(garbage types, unknown and nested keys, non-mapping documents, invalid YAML) and key=value overrides.
Contract: a clear error (ValueError, or SystemExit with a message for the multitask CLI / argparse) or a
config whose every value has the type its default has (so no run starts on a silently wrong config)."""
import argparse
import os
import tempfile

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from sparsecl.continual.run import add_arguments, build_config
from sparsecl.continual.trainer import DEFAULTS as CONTINUAL_DEFAULTS
from sparsecl.multitask.cli import load_config
from sparsecl.multitask.train import DEFAULTS as MULTITASK_DEFAULTS

from ._strategies import fuzz_settings

_DIR = tempfile.mkdtemp(prefix="sparsecl-fuzz-cfg-")
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(["adaptive", "erk", "sgd", "mlp", "digits", "1e3", "[1, 2]",
                                                          "{a: 1}", "cpu", "~", "yes"]))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c,
                                                                                              max_size=3)), max_leaves=6)


def _keys(d, prefix=""):
    for k, v in d.items():
        yield from (_keys(v, prefix + k + ".") if isinstance(v, dict) else [prefix + k])


CONTINUAL_KEYS = sorted(_keys(CONTINUAL_DEFAULTS))
key_names = lambda known: st.one_of(st.sampled_from(known), st.text(max_size=10))  # noqa: E731


@st.composite
def yaml_doc(draw, known):
    kind = draw(st.sampled_from(["mapping", "mapping", "mapping", "other", "broken"]))
    if kind == "broken":
        return draw(st.sampled_from(["a: [1,", "{", ": :", "a: b: c", "\t- x", "!!python/object:os.system x"]))
    if kind == "other":
        return yaml.safe_dump(draw(values))
    doc = {}
    for key in draw(st.lists(key_names(known), max_size=4)):
        d = doc
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {}) if isinstance(d.get(p, {}), dict) else d
        d[parts[-1]] = draw(values)
    return yaml.safe_dump(doc)


def _write(text):
    fd, path = tempfile.mkstemp(suffix=".yaml", dir=_DIR)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _override(draw, known):
    return draw(st.one_of(st.builds(lambda k, v: f"{k}={v}", key_names(known), st.one_of(
        values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip().replace("\n", " ")),
        st.text(max_size=8))), st.text(max_size=10)))


def _type_ok(value, default, key):
    if key == "density":
        return value == "adaptive" or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if key == "model.width":  # null: the model's own default width
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if default is None:
        return value is None or isinstance(value, (str, dict, list))
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, type(default))


def _get(cfg, key):
    for p in key.split("."):
        cfg = cfg[p]
    return cfg


@fuzz_settings(200)
@given(data=st.data())
@example(data=None)
def test_continual_config_and_overrides(data):
    p = argparse.ArgumentParser()
    add_arguments(p)
    if data is None:  # explicit: a string where an int belongs must be rejected naming the key
        argv = ["epochs=ten"]
    else:
        argv = [_override(data.draw, CONTINUAL_KEYS) for _ in range(data.draw(st.integers(0, 3)))]
        for _ in range(data.draw(st.integers(0, 2))):
            argv += ["--config", _write(data.draw(yaml_doc(CONTINUAL_KEYS)))]
        argv = [a for a in argv if not a.startswith("-") or a == "--config" or a.endswith(".yaml")]
    try:
        args = p.parse_args(argv)
        cfg = build_config(args)
    except (ValueError, yaml.YAMLError) as exc:
        assert str(exc).strip()
        return
    except SystemExit as exc:  # argparse usage error
        assert exc.code != 0
        return
    for key in CONTINUAL_KEYS:
        v = _get(cfg, key)
        assert _type_ok(v, _get(CONTINUAL_DEFAULTS, key), key), f"{key}={v!r} accepted (default {_get(CONTINUAL_DEFAULTS, key)!r})"


@fuzz_settings(200)
@given(data=st.data())
@example(data=None)
def test_multitask_config_and_overrides(data):
    known = sorted(MULTITASK_DEFAULTS)
    if data is None:  # explicit: batch_size=null was accepted
        path, overrides = None, ["batch_size="]
    else:
        path = _write(data.draw(yaml_doc(known))) if data.draw(st.booleans()) else None
        overrides = [_override(data.draw, known) for _ in range(data.draw(st.integers(0, 3)))]
    try:
        cfg = load_config(path, overrides)
    except (ValueError, yaml.YAMLError) as exc:
        assert str(exc).strip()
        return
    except SystemExit as exc:
        assert exc.code not in (0, None) and str(exc.code).strip()
        return
    for key, default in MULTITASK_DEFAULTS.items():
        assert _type_ok(cfg[key], default, key), f"{key}={cfg[key]!r} accepted (default {default!r})"
