"""Strategy graphs: one LangGraph builder per strategy, a registry by name, and the runner."""
