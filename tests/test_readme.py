"""The README's code is true: its Python tour runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_tour_runs_and_samples_the_stated_shape():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no ```python block"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["images"].shape == (4, 3, 16, 16)
    assert namespace["loss"].data.shape == ()


def test_ci_runs_the_readme_test_command_word_for_word():
    test_command = 'pip install -e ".[test]" && python -m pytest -q'
    assert test_command in README.read_text()
    assert test_command in (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[examples]" && refdiff demo' in README.read_text()


def sampler_table_rows():
    """{sampler name: the text of its row} of the README's table of samplers (section "Samplers")."""
    section = README.read_text().split("\n## Samplers\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \|", line)
        if match:
            rows[match.group(1)] = line
    return rows


def test_every_registered_sampler_has_a_readme_row_naming_its_options():
    """The table cannot fall behind the registry: each of refdiff's own samplers has a row, and the
    row names every option the registry reads from its signature (directly, or through the row it
    refers to with "as `other`")."""
    import refdiff  # noqa: F401 (registers the samplers)
    from refdiff.samplers import SAMPLERS
    from refdiff.samplers.registry import sampler_spec

    rows = sampler_table_rows()
    own = [name for name, fn in SAMPLERS.items() if sampler_spec(name).fn.__module__.startswith("refdiff.")]
    assert len(own) >= 15, own
    missing = [name for name in own if name not in rows]
    assert not missing, f"README's table of samplers has no row for {missing}"
    for name in own:
        text = rows[name]
        referred = re.search(r"as `(\w+)`", text)
        if referred:
            text += rows[referred.group(1)]
        unnamed = [o for o in sampler_spec(name).options if f"`{o}`" not in text]
        assert not unnamed, f"README row of {name!r} does not name its options {unnamed}"
    unknown = sorted(set(rows) - set(SAMPLERS))
    assert not unknown, f"README's table names samplers that are not registered: {unknown}"
