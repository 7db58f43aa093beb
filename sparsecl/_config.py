"""Type and value checking of trainer configs (shared by ``sparsecl continual`` and ``sparsecl multitask``)."""
import math


def _kind(default):
    if isinstance(default, bool):
        return (bool,), "a bool"
    if isinstance(default, int):
        return (int,), "an int"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a string"
    if isinstance(default, list):
        return (list,), "a list"
    return (str, type(None)), "a string or null"


def check_types(cfg, defaults, alternatives=None, prefix=""):
    """Raise ValueError unless every value of ``cfg`` has the type of its default.

    ints are accepted where floats are (never bools); a None default takes a string or null; list defaults
    take lists of numbers; ``alternatives`` maps a dotted key to (types, description) overriding the default's."""
    alternatives = alternatives or {}
    for key, default in defaults.items():
        name, value = prefix + key, cfg.get(key)
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {name!r} must be a mapping, got {value!r}")
            check_types(value, default, alternatives, name + ".")
            continue
        types, what = alternatives.get(name) or _kind(default)
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and isinstance(default, list):
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok:
            raise ValueError(f"config key {name!r} must be {what}, got {value!r} ({type(value).__name__})")


class Range:
    """A finite number in [lo, hi] (``lo_open``/``hi_open``: strict bounds); ``integral``: a whole number."""

    def __init__(self, lo=None, hi=None, lo_open=False, hi_open=False, integral=False):
        self.lo, self.hi, self.lo_open, self.hi_open, self.integral = lo, hi, lo_open, hi_open, integral

    def accepts(self, value):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.integral and value != int(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self):
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.lo_open else '>='} {self.lo}")
        if self.hi is not None:
            bounds.append(f"{'<' if self.hi_open else '<='} {self.hi}")
        kind = "a whole number" if self.integral else "a finite number"
        return f"{kind} {' and '.join(bounds)}".rstrip()


class OneOf:
    """One of the given values."""

    def __init__(self, *choices):
        self.choices = choices

    def accepts(self, value):
        return any(value == c and type(value) is type(c) for c in self.choices)

    def describe(self):
        return repr(self.choices[0]) if len(self.choices) == 1 else "one of " + ", ".join(map(repr, self.choices))


def check_values(cfg, rules, hint=None):
    """Raise ValueError unless every dotted key of ``rules`` holds an accepted value.

    ``rules`` maps a dotted key to a rule (``Range``/``OneOf``) or a tuple of rules (any may accept); lists are
    checked element by element; None passes (``check_types`` decides whether None is allowed). ``hint(key)``
    returns text on how to set the key, appended to the message."""
    for key, rule in rules.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if value is None:
            continue
        alternatives = rule if isinstance(rule, tuple) else (rule,)
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if not any(r.accepts(v) for r in alternatives)]
        if bad:
            what = " or ".join(r.describe() for r in alternatives)
            where = f" (element {bad[0]!r})" if isinstance(value, list) else ""
            what = f"a list, each element {what}" if isinstance(value, list) else what
            raise ValueError(f"config key {key!r} must be {what}, got {value!r}{where}{hint(key) if hint else ''}")
