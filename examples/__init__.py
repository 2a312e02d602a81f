"""Worked examples of nas_prune on tasks other than classification (run them from the repository root)."""
