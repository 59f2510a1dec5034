"""How questions, partial solutions and revision contexts are written as model prompts.

The testbed models are trained on exactly these layouts; real models get the same layout unless a
different `PromptFormat` is passed in the runtime context.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

STEP_SEPARATOR = "\n\n"


class PromptFormat(BaseModel):
    """Text layout of solution and revision prompts."""

    model_config = ConfigDict(frozen=True)

    question_template: str = "Question: {question}\nSolution:\n"
    step_separator: str = STEP_SEPARATOR
    attempt_template: str = "Attempt {index}:\n{answer}\n\n"
    revision_header: str = "Question: {question}\n\n"
    revision_footer: str = "Revised solution:\n"
    max_attempts_in_context: int = 4

    def solution(self, question: str, steps: Sequence[str] = ()) -> str:
        """Prompt for the next step of a solution whose earlier `steps` are given."""
        head = self.question_template.format(question=question)
        return head + "".join(step + self.step_separator for step in steps)

    def revision(self, question: str, attempts: Sequence[str]) -> str:
        """Prompt for a revised answer given the most recent earlier attempts (at most 4 are shown)."""
        shown = list(attempts)[-self.max_attempts_in_context :] if attempts else []
        body = "".join(
            self.attempt_template.format(index=i, answer=answer) for i, answer in enumerate(shown, 1)
        )
        return self.revision_header.format(question=question) + body + self.revision_footer

    def split_steps(self, answer: str) -> list[str]:
        """Split a full answer into its steps (blank-line separated, empty pieces dropped)."""
        return [piece.strip() for piece in answer.split(self.step_separator) if piece.strip()]

    def join_steps(self, steps: Sequence[str]) -> str:
        return self.step_separator.join(steps)


DEFAULT_FORMAT = PromptFormat()
