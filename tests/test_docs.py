"""Every public function of the reference math gives its equation's source in its docstring."""
import inspect
import re

import pytest

import refdiff as rd

MATH_FOLDERS = ("refdiff.gaussian.", "refdiff.samplers.")  # every public name defined in the math folders
MATH_NAMES = sorted(n for n in rd.__all__ if rd._EXPORTS.get(n, "").startswith(MATH_FOLDERS))
# a paper equation, algorithm, section or appendix, or the diffusers function that is followed
SOURCE = re.compile(r"\b(eqs?\.|Algorithm|sec\.|appendix|diffusers)", re.I)


def test_the_math_modules_export_something_to_check():
    assert len(MATH_NAMES) >= 15


@pytest.mark.parametrize("name", MATH_NAMES)
def test_public_math_function_docstring_cites_its_source(name):
    doc = inspect.getdoc(getattr(rd, name)) or ""
    assert SOURCE.search(doc), f"refdiff.{name}: the docstring names no equation or source:\n{doc}"
