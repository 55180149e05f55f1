"""Persistence: the store protocol, the business rules both SQL dialects share, SQLite and
PostgreSQL, the records they keep, and the async runner the services call them through."""
