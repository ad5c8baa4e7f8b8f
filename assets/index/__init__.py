"""Group `index`: the chunks' embeddings and the FAISS vector index, and the RAG bot that answers from them."""
