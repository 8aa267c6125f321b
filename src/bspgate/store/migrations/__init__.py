"""Versioned schema migrations, one `NNN_name.sql` file each, shared by SQLite and PostgreSQL."""
