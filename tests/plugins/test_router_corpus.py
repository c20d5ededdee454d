"""Documentation harvest for --domain-docs: prose paragraphs only, deterministic."""

from __future__ import annotations

from forge_plugins.router.train.corpus import _harvest, _paragraphs


def test_paragraphs_keep_prose_and_drop_examples_and_tables() -> None:
    doc = """Summary line.

    Compute the determinant of a square matrix using the Bareiss algorithm.

    Parameters
    ==========
    method : str

    >>> det(Matrix([[1, 2], [3, 4]]))
    -2
    """
    assert _paragraphs(doc) == ["Compute the determinant of a square matrix using the Bareiss algorithm."]


def test_harvest_is_deterministic_and_real() -> None:
    first, second = _harvest(("json",)), _harvest(("json",))
    assert first == second
    assert len(first) >= 5
    assert any("JSON" in text for text in first)
