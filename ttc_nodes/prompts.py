"""How questions, partial solutions and revision contexts are written as model prompts.

The testbed models are trained on exactly these layouts; real models get the same layout unless a
different `PromptFormat` is passed in the runtime context. Two opt-in extras for real models:
`few_shot` worked examples written ahead of the question in the same layout, and
`PromptFormat.for_chat`, which wraps the layout in a model's chat template (`?chat=1` on an `hf:` or
`gguf:` URI builds one from the model's own template).

A question longer than `MAX_QUESTION_CHARS` is refused (`QuestionTooLong`) before it is written into
any prompt, so an oversized input fails at once instead of being tokenised and read by a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict

STEP_SEPARATOR = "\n\n"
MAX_QUESTION_CHARS = 32_000
"""The longest question any node or engine takes (MATH-500's longest is about 1,500 characters)."""


class QuestionTooLong(ValueError):
    """A question over `MAX_QUESTION_CHARS`."""


def check_question_size(question: str) -> None:
    """Refuse (QuestionTooLong) a question of more than MAX_QUESTION_CHARS characters."""
    if len(question) > MAX_QUESTION_CHARS:
        raise QuestionTooLong(
            f"the question is {len(question):,} characters long; the most a prompt takes is "
            f"{MAX_QUESTION_CHARS:,} (MAX_QUESTION_CHARS)"
        )


ChatRenderer = Callable[[list[dict[str, str]]], str]
"""Renders chat messages as the model's prompt text, ending with the assistant's turn opened
(e.g. `functools.partial(tokenizer.apply_chat_template, tokenize=False, add_generation_prompt=True)`)."""

_SLOT = "\x00slot\x00"  # stands for the user's text while a chat template is rendered


class PromptFormat(BaseModel):
    """Text layout of solution and revision prompts."""

    model_config = ConfigDict(frozen=True)

    question_template: str = "Question: {question}\nSolution:\n"
    step_separator: str = STEP_SEPARATOR
    attempt_template: str = "Attempt {index}:\n{answer}\n\n"
    revision_header: str = "Question: {question}\n\n"
    revision_reminder: str = "Question: {question}\n"
    """Written after the attempts (when there are any), so the question sits beside the revised
    solution; without it the small testbed reviser, four attempts away from the question, loses
    track of its operands. An empty string leaves it out."""
    revision_footer: str = "Revised solution:\n"
    max_attempts_in_context: int = 4
    few_shot: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Worked examples (question, steps) written before the question, in this same layout."""
    chat: bool = False
    """True when `question_template` wraps the question in a chat template (see `for_chat`)."""

    @classmethod
    def for_chat(
        cls,
        render: ChatRenderer,
        *,
        instruction: str = "",
        few_shot: Sequence[tuple[str, Sequence[str]]] = (),
        base: PromptFormat | None = None,
    ) -> PromptFormat:
        """The layout of `base` (default: the plain layout) inside a chat template.

        The question (after `instruction`) is the user's turn and the solution is the assistant's, so
        partial steps continue the assistant's turn; few-shot examples become earlier user/assistant
        turns. A revision prompt puts the question and attempts in the user's turn.
        """
        plain = base or cls()
        turns: list[dict[str, str]] = []
        for question, steps in few_shot:
            turns += [
                {"role": "user", "content": instruction + question},
                {"role": "assistant", "content": plain.join_steps(steps)},
            ]
        before, after = _around_slot(render, turns)
        revision_before, revision_after = _around_slot(render, [])
        return plain.model_copy(
            update={
                "question_template": _literal(before + instruction) + "{question}" + _literal(after),
                "revision_header": _literal(revision_before) + plain.revision_header,
                "revision_footer": plain.revision_footer.rstrip("\n") + revision_after,
                "few_shot": (),
                "chat": True,
            }
        )

    def solution(self, question: str, steps: Sequence[str] = ()) -> str:
        """Prompt for the next step of a solution whose earlier `steps` are given (QuestionTooLong for
        a question over MAX_QUESTION_CHARS)."""
        check_question_size(question)
        examples = "".join(
            self.question_template.format(question=q) + "".join(s + self.step_separator for s in shown)
            for q, shown in self.few_shot
        )
        head = self.question_template.format(question=question)
        return examples + head + "".join(step + self.step_separator for step in steps)

    def revision(self, question: str, attempts: Sequence[str]) -> str:
        """Prompt for a revised answer given the most recent earlier attempts (at most 4 are shown)."""
        check_question_size(question)
        shown = list(attempts)[-self.max_attempts_in_context :] if attempts else []
        body = "".join(self.attempt_template.format(index=i, answer=answer) for i, answer in enumerate(shown, 1))
        reminder = self.revision_reminder.format(question=question) if shown else ""
        return self.revision_header.format(question=question) + body + reminder + self.revision_footer

    def split_steps(self, answer: str) -> list[str]:
        """Split a full answer into its steps (blank-line separated, empty pieces dropped)."""
        return [piece.strip() for piece in answer.split(self.step_separator) if piece.strip()]

    def join_steps(self, steps: Sequence[str]) -> str:
        return self.step_separator.join(steps)


def _around_slot(render: ChatRenderer, turns: list[dict[str, str]]) -> tuple[str, str]:
    """The rendered chat text before and after the last user message's content."""
    text = render([*turns, {"role": "user", "content": _SLOT}])
    if text.count(_SLOT) != 1:
        raise ValueError("the chat template does not render the user's message verbatim")
    before, after = text.split(_SLOT)
    return before, after


def _literal(text: str) -> str:
    """`text` escaped for `str.format`, so braces in a chat template stay braces."""
    return text.replace("{", "{{").replace("}", "}}")


DEFAULT_FORMAT = PromptFormat()
