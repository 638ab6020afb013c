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
