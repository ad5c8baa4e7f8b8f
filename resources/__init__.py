"""Everything that talks to the outside world: crawler, local site server, storage, models, index."""
