"""Solve one question from Python: best-of-N weighted at a budget of 8 generations, on the testbed
models shipped with ttc, graded against the reference answer.

No set-up: every step is traced into the default database, `TTC_DATABASE_URL` if it is set, else a
SQLite file in your user data directory (`~/.local/share/ttc/ttc.db` on Linux), created on first use.
`ttc trace` then shows the run. Run it with:

    .venv/bin/python examples/solve_in_python.py
"""

from flows.service.config import ModelSettings
from flows.service.solving import solve_question

if __name__ == "__main__":
    outcome = solve_question(
        "Compute (12 + 5) * 2 - 3.",
        strategy="best_of_n_weighted",  # any name `ttc strategies` lists
        values={"budget": 8},  # the strategy's settings, as `--set` gives them
        models=ModelSettings(),  # testbed:proposer and testbed:prm, unless TTC_PROPOSER / TTC_VERIFIER say
        reference="31",
    )
    print(f"answer: {outcome.answer} (correct: {outcome.correct}) for {outcome.spend.generations:g} generations")
    print(f"run {outcome.run_id}: `ttc trace {outcome.run_id}` shows every step")
