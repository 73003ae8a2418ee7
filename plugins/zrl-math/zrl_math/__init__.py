"""zrl-math: math reward verifiers for zero-RL, registered through zrl's hooks."""

from zrl_plugins.sdk import hookimpl

from .extract import extract_answer
from .grading import Grader, grade
from .verifiers import BoxedFormat, MathCorrect

__all__ = ["BoxedFormat", "Grader", "MathCorrect", "extract_answer", "grade"]


@hookimpl
def zrl_register_verifiers(register):
    register("math_correct", MathCorrect)
    register("boxed_format", BoxedFormat)
