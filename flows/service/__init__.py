"""Solving one question, traced: model settings, dataset loading, the engines a strategy needs, the
database sink every step goes through. Flows and the CLI call this; it knows no Prefect."""
