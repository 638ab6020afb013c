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


def test_every_registered_sampler_has_a_row_naming_its_options():
    """The Samplers table: a row per registered sampler, its first cell the name, its options cell
    naming every option the sampler declares (ddpm's `eta` is declared only to refuse a nonzero eta
    with a pointer to ddim, so it is no option of ddpm's)."""
    from refdiff.samplers import SAMPLERS, sampler_spec

    not_options = {("ddpm", "eta")}
    rows = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells[3]
    missing = sorted(set(SAMPLERS) - set(rows))
    assert not missing, f"README's sampler table has no row for {missing}"
    for name in SAMPLERS:
        unnamed = [o for o in sampler_spec(name).options if (name, o) not in not_options and f"`{o}`" not in rows[name]]
        assert not unnamed, f"README row of {name!r} does not name its options {unnamed}"
