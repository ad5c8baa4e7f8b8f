"""One module per pipeline stage; each holds pure functions and the thin Dagster assets over them."""
