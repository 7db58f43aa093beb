"""Type checking of trainer configs (shared by ``sparsecl continual`` and ``sparsecl multitask``)."""


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
