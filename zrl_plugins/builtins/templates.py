"""Prompt templates of the zero-RL papers (docs/methods.md#templates), registered as components of kind ``template``."""

from __future__ import annotations

from typing import Any

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


class TextTemplate:
    """A ``str.format`` template with a ``{question}`` field, as plain text or as one user chat message.

    Args:
        text: the template; ``{question}`` is replaced by the problem statement.
        chat: ``True`` → ``[{"role": "user", ...}]`` (plus ``system`` when given), rendered by the tokenizer's
            chat template; ``False`` → the plain string (base models).
        system: an optional system message (chat only).
        answer_format: where the final answer is expected (``boxed``, ``answer_is``, ``last_number``, ``auto``).
    """

    def __init__(self, text: str, chat: bool, system: str | None = None, answer_format: str = "auto"):
        if "{question}" not in text:
            raise ValueError(f"a template needs a {{question}} field: {text!r}")
        self.text, self.chat, self.system, self.answer_format = text, chat, system, answer_format

    def __call__(self, question: str) -> str | list[dict[str, str]]:
        content = self.text.format(question=question)
        if not self.chat:
            return content
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": content}]

    def __repr__(self) -> str:
        return f"TextTemplate({self.text!r}, chat={self.chat}, answer_format={self.answer_format!r})"


def simple(chat: bool = False) -> TextTemplate:
    """SimpleRL-Zoo's simple prompt for base models (no chat template, no format instruction)."""
    return TextTemplate("Question:\n{question}\nAnswer:\nLet's think step by step.\n", chat=chat)


def chat_boxed(chat: bool = True, system: str | None = None) -> TextTemplate:
    """SimpleRL-Zoo's chat prompt asking for the final answer in ``\\boxed{}`` (its "qwen-boxed" with
    ``system="You are a helpful assistant."``)."""
    instruction = BOXED_INSTRUCTION.replace("{", "{{").replace("}", "}}")  # literal braces under str.format
    return TextTemplate("{question}\n" + instruction, chat=chat, system=system, answer_format="boxed")


def qwen_math(chat: bool = True) -> TextTemplate:
    """Qwen2.5-Math's prompt: the boxed instruction as the system message, the question as the user's."""
    return TextTemplate("{question}", chat=chat, system=BOXED_INSTRUCTION, answer_format="boxed")


def r1_think(chat: bool = False) -> TextTemplate:
    """DeepSeek-R1-Zero's prompt: reasoning in ``<think>``, answer in ``<answer>`` (boxed), for base models."""
    return TextTemplate(
        "A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The "
        "Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. "
        "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
        "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. Put the final "
        "answer within \\boxed{{}}.\nUser: {question}\nAssistant: <think>",
        chat=chat,
        answer_format="boxed",
    )


def plain(chat: bool = True, suffix: str = "") -> TextTemplate:
    """The question as it is (plus an optional suffix such as "Answer with just the number.")."""
    return TextTemplate("{question}" + (f" {suffix}" if suffix else ""), chat=chat, answer_format="last_number")


TEMPLATES: dict[str, Any] = {
    "simple": simple,
    "chat_boxed": chat_boxed,
    "qwen_math": qwen_math,
    "r1_think": r1_think,
    "plain": plain,
}
