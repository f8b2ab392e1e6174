"""The house keeps its shape: project imports point down (models <- lm2a <- stage scripts <-
sometest) and stand at the top of their files, no circle, no long function in lm2a/ or a stage
script (sometest/import_map.py draws and checks the same)."""

from sometest import import_map as H


def test_imports_point_down_with_no_circle():
    edges = H.imports()
    assert len(edges) > 100  # the walk found the project's imports
    assert H.upward(edges) == []
    assert H.circles(edges) == []
    models_deps = {b for a, b, _, _ in edges if a.startswith("models")}
    assert models_deps and all(b.startswith("models") for b in models_deps)


def test_project_imports_stand_at_the_top():
    assert [e for e in H.imports() if e[3]] == []


def test_no_function_over_the_limit():
    assert H.long_functions() == []


def test_the_checks_see_what_they_look_for(tmp_path):
    """On a made-up tree: an upward import inside a function, a circle, a long function."""
    for package in ("models", "lm2a", "sometest"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name in H.STAGE_SCRIPTS:
        (tmp_path / f"{name}.py").write_text("")
    (tmp_path / "models" / "a.py").write_text("def f():\n    import lm2a.b\n")
    (tmp_path / "lm2a" / "b.py").write_text("from lm2a import c\n" + "def g():\n" + "    x = 1\n" * 70)
    (tmp_path / "lm2a" / "c.py").write_text("import lm2a.b\nimport train\n")
    edges = H.imports(tmp_path)
    assert sorted((a, b) for a, b, _, _ in H.upward(edges)) == [("lm2a.c", "train"), ("models.a", "lm2a.b")]
    assert [e[:2] for e in edges if e[3]] == [("models.a", "lm2a.b")]
    assert H.circles(edges) == [["lm2a.b", "lm2a.c"]]
    assert H.long_functions(tmp_path) == [(71, "lm2a.b", "g")]


def test_cli_prints_the_summary(tmp_path, capsys):
    assert H.main(["--png", str(tmp_path / "house.png")]) == 0
    assert "0 upward, 0 circles" in capsys.readouterr().out
    assert (tmp_path / "house.png").stat().st_size > 10000
