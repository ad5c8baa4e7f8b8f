"""Group `qa`: passages worth a question (`qa_chunks`) and the questions a chat model writes for them
(`synthetic_qa`), with their held-out splits."""
