"""The annotation app: experts judge their queue in the browser (pages) or from any client (JSON API).

A FastAPI app over the feedback store's API. It takes no identity of its own: ``create_app`` is given the dependency
that authenticates a request (the Airflow plugin passes Airflow's auth manager), refuses everything without one, and
lets only experts on the roster read or write.
"""
