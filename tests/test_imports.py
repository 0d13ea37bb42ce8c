

def _definitions() -> dict[str, set[str]]:
    """Public top-level name -> the systems (cot, circuits, analog, core) defining it."""
    found: dict[str, set[str]] = {}
    for name, path in _modules().items():
        parts = name.split(".")
        system = parts[1] if len(parts) > 2 else "top"
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                found.setdefault(node.name, set()).add(system)
    return found


@pytest.mark.parametrize("name", ["Task", "load_model", "evaluate_model"])
def test_an_ambiguous_name_means_one_thing_across_the_package(name: str) -> None:
    assert len(_definitions().get(name, set())) <= 1, _definitions()[name]
