"""Store test plumbing shared by the suite: throwaway PostgreSQL databases and schemas."""
