"""`outpaint serve`: the HTTP service, a drop-in replacement for the hosted SD 1.5 outpainting API.

app.py (routes, validation, errors) · credits.py (keys and balances in SQLite) · gate.py (the bounded
queue in front of the one pipeline) · metrics.py (Prometheus) · run.py (uvicorn, graceful drain) ·
cli.py (`outpaint serve`, `outpaint keys`). The contract is docs/api.md; docs/server.md records where
we had to decide what it leaves open.
"""
