"""The store: SQLModel tables, schema migrations, the engine and sessions, row helpers."""
