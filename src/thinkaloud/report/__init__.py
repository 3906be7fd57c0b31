"""The report: report.md + report.html built from eval, sweep, RL and findings folders, with its figures, token
views and terminal tables; it reads result files and imports no job, so training and eval jobs draw with it."""
