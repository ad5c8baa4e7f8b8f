"""Group `evaluation`, split by topic: every model's answers (answers), ROUGE and similarity (rouge), the LLM judge
and its validity (judge, judge_reply), retrieval hit@k/MRR (retrieval), golden questions (golden), the comparison
across models (leaderboard), its tables, plots and files (reports), and bring-your-own answers (external)."""
