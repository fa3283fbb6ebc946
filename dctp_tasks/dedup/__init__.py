"""Deduplication, in the order the daily DAG runs it: exact (``exact``), near (``near``, MinHash LSH over
``minhash`` signatures) and semantic (``semantic``, sentence embeddings). The stages share how survivors are ranked
and verdicts applied (``verdicts``) and the per-run report (``report``)."""
