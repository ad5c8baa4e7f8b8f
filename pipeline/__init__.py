"""mebot's wiring: definitions, jobs, the `mebot` command, `mebot run`'s scheduler and the HTTP server."""
