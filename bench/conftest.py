"""pytest-benchmark glue: each bench module's CASES parametrize its ``case`` argument."""


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = getattr(metafunc.module, "CASES", [])
        metafunc.parametrize("case", cases, ids=[c["id"] for c in cases])
