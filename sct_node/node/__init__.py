"""The node's roles, in the order data flows through them.

receive (``receive``, behind ``netguard`` and ``tls``) -> spool (``spool``) ->
route (``route``: completion and routing rules) -> process (``process``: read, model,
write; ``qa_stage``: QA, report, hold) -> dispatch (``dispatch``), with ``state`` the
one SQLite source of truth and ``service`` running the roles as threads.
"""
