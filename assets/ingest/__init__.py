"""Group `ingest`: crawl the site (`raw_pages`, with its HTML-to-text extraction) and split it into `rag_chunks`."""
