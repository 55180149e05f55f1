"""Controller replicas on one PostgreSQL: the change feed between them and what each does with
the others' changes."""
